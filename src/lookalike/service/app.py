"""The FastAPI app: recommenders, search, catalogue management, KPIs, Prometheus metrics and the dashboard.

`create_app` builds the shared state (state.py), adds the middleware and the error handler, and includes
one router per area (routes/), guarding each as the settings ask; the routers reach the state through a
dependency (deps.py). Every endpoint takes multipart form fields (forms.py). User mistakes answer 4xx with
a message naming the field and value; a failed write changes nothing (routes/items.py). With an auth file,
writes need a bearer token (auth.py); a rate limit answers 429 per client (ratelimit.py).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lookalike.errors import LookalikeError
from lookalike.recommend.statistics import StatisticsPending
from lookalike.service.deps import ADMIN, READ, WRITE
from lookalike.service.middleware import RequestGuard, TokenGate
from lookalike.service.ratelimit import Rate, RateLimit
from lookalike.service.routes import auth, events, itembank, items, monitoring, recommend, search, tag
from lookalike.service.state import Core, Service, ServiceSettings

__all__ = ["ServiceSettings", "create_app"]


def create_app(settings: ServiceSettings) -> FastAPI:
    svc = Service(settings) if settings.checkpoint else Core(settings)  # Core: the item bank alone

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        svc.close()  # the statistics thread stops before a served process releases the store (workers.py)

    app = FastAPI(
        title="lookalike",
        version="1",
        description="Look-alike product recommendations on a learned space.",
        lifespan=lifespan,
    )
    app.state.service = svc

    @app.exception_handler(LookalikeError)
    async def user_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StatisticsPending)
    async def statistics_pending(request: Request, exc: StatisticsPending) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    # Security dependencies: they check the bearer token and put the scheme into the OpenAPI schema.
    writes = [WRITE] if svc.tokens else []
    reads = [READ] if svc.tokens and settings.auth_reads else []
    catalogue = [
        (recommend.router(settings.max_k), reads),
        (search.router(settings.max_k), reads),
        (tag.router, reads),
        (items.read_router, reads),
        (items.write_router, writes),
        (events.router, writes),
        (events.read_router, reads),
    ]
    bank = [(itembank.read_router(settings.max_k), reads), (itembank.write_router, writes)]
    routers = [
        *(catalogue if isinstance(svc, Service) else []),
        *(bank if svc.itembank is not None else []),
        (auth.router, []),
        *([(auth.admin_router, [ADMIN])] if svc.tokens else []),
        *(
            [(monitoring.router, reads), (monitoring.page_router, [])]
            if isinstance(svc, Service)
            else [(itembank.metrics_router, reads)]
        ),
    ]
    for router, guards in routers:
        app.include_router(router, dependencies=guards)
    if svc.tokens:  # the same check before the body is read (a dependency runs only after the form is parsed)
        app.add_middleware(TokenGate, tokens=svc.tokens, routes=TokenGate.scopes(routers))
    if settings.rate_limit:  # inside RequestGuard, so refused requests are counted too
        app.add_middleware(RateLimit, rate=Rate.parse(settings.rate_limit))
    # images, plus room for the other form fields and several images in one top10_to_new request
    app.add_middleware(RequestGuard, metrics=svc.metrics, max_body=8 * svc.max_bytes + 1024 * 1024)
    return app
