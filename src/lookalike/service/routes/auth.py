"""What the server asks for (/api/auth, public) and the accepted tokens (/api/auth/tokens, admin scope).

`create_app` includes the admin router only when the server has an auth file, as before the split.
"""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials

from lookalike.service.auth import bearer
from lookalike.service.deps import CoreDep

router = APIRouter(tags=["auth"])
admin_router = APIRouter(tags=["auth"])


@router.get("/api/auth")
def auth_info(svc: CoreDep, cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> dict:
    """What this server asks for, and which token (id and scope, never the token) a request carries."""
    token = None
    if svc.tokens and cred is not None:
        rec = svc.tokens.match(cred.credentials)
        if rec is None:
            raise HTTPException(
                401,
                "the bearer token is not valid (unknown or revoked)",
                headers={"WWW-Authenticate": 'Bearer realm="lookalike", error="invalid_token"'},
            )
        token = {"id": rec.id, "scope": rec.scope, "name": rec.name}
    return {
        "writes_need_token": svc.tokens is not None,
        "reads_need_token": bool(svc.tokens and svc.settings.auth_reads),
        "token": token,
        "rate_limit": svc.settings.rate_limit,
    }


@admin_router.get("/api/auth/tokens")
def auth_tokens(svc: CoreDep) -> dict:
    """The accepted tokens' ids, scopes, names and creation times (admin scope; hashes never shown)."""
    assert svc.tokens is not None, "create_app includes this router only with an auth file"
    return {
        "tokens": [{"id": r.id, "scope": r.scope, "name": r.name, "created": r.created} for r in svc.tokens.records]
    }
