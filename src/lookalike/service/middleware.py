"""ASGI middleware of the service: request metrics and the body-size limit."""

import time

from fastapi.responses import JSONResponse

from lookalike.service.metrics import Metrics


class RequestGuard:
    """Counts and times every request by route template, and refuses a body announced larger than the
    upload limit before anything is read (plain ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = 500
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            status = 413
            detail = f"request body of {int(length)} bytes exceeds the {self.max_body} byte limit"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            self.metrics.observe_request("oversized", scope["method"], status, time.perf_counter() - t)
            return

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - t)
