"""ASGI middleware of the service: request metrics, the request log, request ids, the body-size limit, and
the token check that runs before a guarded route's body is read."""

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import get_route_path

from lookalike.service.auth import SCOPES, TokenFile, authorize, bearer
from lookalike.service.metrics import Metrics

# A stable name operators route to their log stack: one JSON object per line, one line per request.
request_log = logging.getLogger("lookalike.service.requests")
REQUEST_ID = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")


class RequestGuard:
    """Counts and times every request by route template, logs it (one JSON line: request id, method, route,
    status, latency, client; never a header value), answers with `X-Request-ID` (the caller's, if it is a
    plausible id, else a new one), and refuses a body announced larger than the upload limit before
    anything is read (plain ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = 500
        headers = dict(scope["headers"])
        given = headers.get(REQUEST_ID, b"")
        rid = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()  # request.state.request_id: what events cite

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID, rid)]}
            await send(message)

        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            detail = f"request body of {int(length)} bytes exceeds the {self.max_body} byte limit"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send_status)
            self._done(scope, "oversized", status, t, rid)
            return
        try:
            await self.app(scope, receive, send_status)
        finally:
            self._done(scope, getattr(scope.get("route"), "path", "unmatched"), status, t, rid)

    def _done(self, scope, endpoint: str, status: int, t: float, rid: bytes) -> None:
        seconds = time.perf_counter() - t
        self.metrics.observe_request(endpoint, scope["method"], status, seconds)
        if request_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            record = {
                "request_id": rid.decode(),
                "method": scope["method"],
                "route": endpoint,
                "status": status,
                "latency_ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
            }
            request_log.info(json.dumps(record))


class TokenGate:
    """The bearer-token check of the guarded routes, before their body is read.

    FastAPI parses a route's form fields (a multipart body up to the upload limit) before it runs the
    route's security dependency, so without this an unauthenticated write was read whole before its 401.
    This finds the route a request is for as the router would (the first whose path and method match)
    and, if that route needs a token, answers exactly what the dependency answers (same status, detail
    and WWW-Authenticate) without reading the body. The dependencies stay on the routes: they put the
    bearer scheme in the OpenAPI schema and check the token again."""

    def __init__(self, app, tokens: TokenFile, routes: list[tuple[APIRoute, str | None]]):
        self.app, self.tokens, self.routes = app, tokens, routes

    @staticmethod
    def scopes(routers: Iterable[tuple[APIRouter, list]]) -> list[tuple[APIRoute, str | None]]:
        """Each route of the included routers, in inclusion order, with the scope its guards need (None: open)."""
        out = []
        for router, guards in routers:
            need = [getattr(g.dependency, "scope", None) for g in guards]
            scope = max((s for s in need if s), key=SCOPES.index, default=None)
            out += [(r, scope) for r in router.routes if isinstance(r, APIRoute)]
        return out

    def _route(self, scope) -> tuple[APIRoute | None, str | None]:
        path, method = get_route_path(scope), scope["method"]
        for route, need in self.routes:
            if route.path_regex.match(path) and route.methods is not None and method in route.methods:
                return route, need
        return None, None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, need = self._route(scope)
        if need is not None:
            request = Request(scope)
            try:
                authorize(self.tokens, need, await bearer(request))
            except HTTPException as e:
                scope["route"] = route  # metrics and the request log name the route, as for any other answer
                return await (await http_exception_handler(request, e))(scope, receive, send)
        await self.app(scope, receive, send)
