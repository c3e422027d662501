"""The FastAPI app: recommenders, search, catalogue management, KPIs, Prometheus metrics and the dashboard.

`create_app` builds the shared state (state.py), adds the middleware and the error handler, and includes
one router per area (routes/), guarding each as the settings ask; the routers reach the state through a
dependency (deps.py). Every endpoint takes multipart form fields (forms.py). User mistakes answer 4xx with
a message naming the field and value; a failed write changes nothing (routes/items.py). With an auth file,
writes need a bearer token (auth.py); a rate limit answers 429 per client (ratelimit.py).
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lookalike.errors import LookalikeError
from lookalike.service.deps import ADMIN, READ, WRITE
from lookalike.service.middleware import RequestGuard
from lookalike.service.ratelimit import Rate, RateLimit
from lookalike.service.routes import auth, items, monitoring, recommend, search
from lookalike.service.state import Service, ServiceSettings

__all__ = ["ServiceSettings", "create_app"]


def create_app(settings: ServiceSettings) -> FastAPI:
    svc = Service(settings)
    app = FastAPI(title="lookalike", version="1", description="Look-alike product recommendations on a learned space.")
    app.state.service = svc

    @app.exception_handler(LookalikeError)
    async def user_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    if settings.rate_limit:  # inside RequestGuard, so refused requests are counted too
        app.add_middleware(RateLimit, rate=Rate.parse(settings.rate_limit))
    # images, plus room for the other form fields and several images in one top10_to_new request
    app.add_middleware(RequestGuard, metrics=svc.metrics, max_body=8 * svc.max_bytes + 1024 * 1024)

    # Security dependencies: they check the bearer token and put the scheme into the OpenAPI schema.
    writes = [WRITE] if svc.tokens else []
    reads = [READ] if svc.tokens and settings.auth_reads else []
    app.include_router(recommend.router(settings.max_k), dependencies=reads)
    app.include_router(search.router(settings.max_k), dependencies=reads)
    app.include_router(items.read_router, dependencies=reads)
    app.include_router(items.write_router, dependencies=writes)
    app.include_router(auth.router)
    if svc.tokens:
        app.include_router(auth.admin_router, dependencies=[ADMIN])
    app.include_router(monitoring.router, dependencies=reads)
    app.include_router(monitoring.page_router)
    return app
