"""The dependencies the routers declare: the shared `Service`, and the bearer-token guards.

The state is injected, not captured: a router asks for `ServiceDep` and gets the `Service` that
`create_app` put on `app.state.service`, so a router module holds no state of its own and each
app (each worker process) serves its own. The guards check a token against the served token file at
request time; `create_app` attaches them to a router only when the settings ask for tokens, so the
bearer scheme appears in the OpenAPI schema exactly where a token is needed. A dependency runs only
after the route's form is parsed, so `TokenGate` (middleware.py) makes the same check first, from the
`scope` each guard carries.
"""

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from lookalike.service.auth import TokenRecord, authorize, bearer
from lookalike.service.state import Core, Service


async def get_service(request: Request) -> Service:
    """The app's `Service` (async, so it runs on the event loop rather than costing a threadpool hop)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_core(request: Request) -> Core:
    """What every app has (a `Service`, or a `Core` when only the item bank is served): the token file."""
    return request.app.state.service


CoreDep = Annotated[Core, Depends(get_core)]


def require(scope: str):
    """A security dependency admitting tokens of `scope` or above (401 without one, 403 below it)."""

    def check(
        request: Request, svc: CoreDep, cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None
    ) -> TokenRecord:
        assert svc.tokens is not None, "create_app attaches the guards only with an auth file"
        rec = authorize(svc.tokens, scope, cred)
        request.state.token_id = rec.id
        return rec

    check.scope = scope  # type: ignore[attr-defined]  # read by TokenGate
    return check


READ = Depends(require("read"))
WRITE = Depends(require("write"))
ADMIN = Depends(require("admin"))
