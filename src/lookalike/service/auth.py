"""Bearer tokens with scopes for the service: a token file holding only hashes, and the check behind the
routers' security dependencies (deps.py).

Tokens are `secrets.token_urlsafe(32)` (256 random bits), so a plain SHA-256 is enough to store them: no
dictionary can reach them, and a stolen file grants nothing. Scopes nest (admin ⊇ write ⊇ read). The file
is rewritten atomically (temp file + rename, mode 0600) and re-read by a running server when it changes,
so `lookalike auth revoke` takes effect without a restart. Presented tokens are compared with
`hmac.compare_digest` against every stored hash, and never appear in logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lookalike.errors import LookalikeError

SCOPES = ("read", "write", "admin")
log = logging.getLogger("lookalike.auth")


@dataclass(frozen=True)
class TokenRecord:
    id: str
    scope: str
    sha256: str
    name: str = ""
    created: str = ""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_tokens(path: str | Path) -> list[TokenRecord]:
    """The token records of an auth file; a malformed file is a LookalikeError naming what is wrong."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LookalikeError(f"auth file {p} does not exist; create it with `lookalike auth add --file {p}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LookalikeError(f"cannot read auth file {p}: {e}") from None
    rows = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(rows, list):
        raise LookalikeError(f"auth file {p} must be a JSON object with a 'tokens' list")
    out = []
    for n, r in enumerate(rows):
        try:
            rec = TokenRecord(**r)
        except TypeError:
            raise LookalikeError(f"auth file {p}: token {n} must have id, scope and sha256") from None
        if rec.scope not in SCOPES or len(rec.sha256) != 64:
            raise LookalikeError(
                f"auth file {p}: token {rec.id!r} has scope {rec.scope!r} (expected one of "
                f"{list(SCOPES)}) or a malformed hash"
            )
        out.append(rec)
    return out


def write_tokens(path: str | Path, records: list[TokenRecord]) -> None:
    """Replace the auth file atomically: a crash leaves the old file or the new one, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"tokens": [asdict(r) for r in records]}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_token(path: str | Path, scope: str, name: str = "") -> tuple[TokenRecord, str]:
    """A new token of `scope` appended to the file (created if missing); returns its record and the token."""
    if scope not in SCOPES:
        raise LookalikeError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    records = read_tokens(path) if Path(path).exists() else []
    token = secrets.token_urlsafe(32)
    rec = TokenRecord(
        id=secrets.token_hex(4),
        scope=scope,
        sha256=_digest(token),
        name=name,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_tokens(path, [*records, rec])
    return rec, token


def revoke_token(path: str | Path, token_id: str) -> TokenRecord:
    records = read_tokens(path)
    gone = [r for r in records if r.id == token_id]
    if not gone:
        raise LookalikeError(f"no token with id {token_id!r} in {path}; `lookalike auth list --file {path}` shows them")
    write_tokens(path, [r for r in records if r.id != token_id])
    return gone[0]


class TokenFile:
    """The tokens a server accepts, re-read whenever the file changes (checked with one stat per request).

    A file that turns unreadable while serving keeps the last good tokens and logs why, rather than
    locking every writer out over a stray edit; a revocation written by `lookalike auth` is always whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.records = read_tokens(self.path)

    def _stat(self) -> tuple | None:
        try:
            s = os.stat(self.path)
        except OSError:
            return None
        return (s.st_ino, s.st_mtime_ns, s.st_size)

    def _current(self) -> list[TokenRecord]:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self.records = read_tokens(self.path)
                        log.warning("auth file %s re-read: %d token(s)", self.path, len(self.records))
                    except LookalikeError as e:
                        log.error("%s; keeping the %d token(s) read before", e, len(self.records))
                    self._stamp = stamp
        return self.records

    def match(self, token: str) -> TokenRecord | None:
        """The record whose hash equals the token's, comparing against every record in constant time."""
        digest = _digest(token)
        found = None
        for rec in self._current():
            if hmac.compare_digest(rec.sha256, digest):
                found = rec
        return found


bearer = HTTPBearer(auto_error=False, description="a token from `lookalike auth add` (scopes read, write, admin)")


def _challenge(error: str | None = None, scope: str | None = None) -> dict[str, str]:
    parts = (
        ['Bearer realm="lookalike"'] + ([f'error="{error}"'] if error else []) + ([f'scope="{scope}"'] if scope else [])
    )
    return {"WWW-Authenticate": ", ".join(parts)}


def authorize(tokens: TokenFile, scope: str, cred: HTTPAuthorizationCredentials | None) -> TokenRecord:
    """The record of a presented token of `scope` or above (401 without a valid one, 403 below the scope).

    The FastAPI security dependency that calls it (deps.py) finds the token file in the app's state."""
    need = SCOPES.index(scope)
    if cred is None:
        raise HTTPException(
            401,
            f"this endpoint needs a bearer token with scope {scope!r} (header Authorization: Bearer TOKEN)",
            headers=_challenge(scope=scope),
        )
    rec = tokens.match(cred.credentials)
    if rec is None:
        raise HTTPException(
            401, "the bearer token is not valid (unknown or revoked)", headers=_challenge("invalid_token", scope)
        )
    if SCOPES.index(rec.scope) < need:
        raise HTTPException(
            403,
            f"token {rec.id!r} has scope {rec.scope!r}; this endpoint needs {scope!r}",
            headers=_challenge("insufficient_scope", scope),
        )
    return rec
