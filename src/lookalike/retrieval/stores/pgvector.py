"""PostgreSQL + pgvector store: several API workers can share it, and it outgrows one process.

One row per item (id, vector, metadata as JSONB, kept inline beside the vector), an HNSW index (inner
product) and a GIN index on the metadata (a selective filter then ranks only its own rows). Exact search
turns index scans off for its transaction so PostgreSQL scans every row that passes the filter: the same
ground truth as the embedded store. Approximate search with a filter takes whichever path costs less by
measured lines (`paths.py`): those rows ranked exactly, or an iterative HNSW walk on a budget. Writes COPY
(binary) into a temp table and merge with `ON CONFLICT DO UPDATE` in one transaction, rows locked in id
order so concurrent writers cannot deadlock. A write that is a large share of the table, and a bulk `load`,
drop the indexes and build them once over the loaded rows (pgvector builds HNSW far faster that way than row
by row). Filter fields and values reach SQL only as parameters (JSONB containment), never as SQL text.

The version and the counts (base.py) live in one row of `<table>_version`. Every write locks that row
first (`FOR UPDATE`), so writers run one at a time and each reads the counts its predecessor committed;
it reads the counted fields of the rows it replaces or deletes, and saves the new counts and version in
its own transaction: they commit or roll back with the rows.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.retrieval.stores.base import (
    Filters,
    StoreCounts,
    StoreItem,
    Tally,
    VectorStore,
    check_items,
    check_queries,
    normalize_filters,
)
from lookalike.retrieval.stores.paths import EXACT, INDEX, INDEX_THEN_EXACT, PathCosts, ShortWalks, filter_key

_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
BULK = 5000  # upserts this large rebuild the HNSW index after loading, in the same transaction
# Approximate search with a filter: the two paths' costs as `benchmarks/scale.py --parts stores --sweep` fitted them
# (see `PgVectorStore._plan`). FILLED IN FROM THE BENCHMARK.
COSTS = PathCosts(exact_ms=0.44, exact_ms_per_row=0.0016173, index_ms=2.809, index_ms_per_unit=0.0078635)


def _one_line(e: Exception) -> str:
    """libpq's messages span lines (a hint after a tab); an error here is one line."""
    return " ".join(str(e).split())


def _where(conninfo: str) -> str:
    """host:port/db of a connection string, never its password."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        d = conninfo_to_dict(conninfo)
    except psycopg.Error:  # a malformed string: psycopg's own error says what is wrong with it
        return "the given address"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', d.get('user', ''))}"


def _array(v) -> np.ndarray:
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, np.float32)


class PgVectorStore(VectorStore):
    def __init__(
        self,
        conninfo: str,
        dim: int | None = None,
        table: str = "lookalike_items",
        m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 400,
        keepalive=None,
        maintenance_work_mem: str = "1GB",
        build_workers: int = 2,
        space: str | None = None,
    ):
        """`space`: the space the caller's vectors are in ("" or "adapter:F"); checked against the one recorded
        with the table, and recorded by the first to give one (see `VectorStore.use_space`)."""
        import psycopg
        from psycopg import sql

        if not _TABLE.match(table):
            raise LookalikeError(f"table name must match {_TABLE.pattern}, got {table!r}")
        # ef_search 400: recall@10 0.944 on 1M × 512 at p50 9.9 ms on 2 cores (100: 0.705; benchmarks/scale.py)
        self.conninfo, self.ef_search, self.table = conninfo, ef_search, table
        self.maintenance_work_mem, self.build_workers = maintenance_work_mem, build_workers
        self.last_load: dict = {}  # timings of the last bulk load, for the CLI and benchmarks
        self.path_counts: Counter[str] = Counter()  # how approximate searches ran, per query (`_plan`)
        self.index_path = "cost"  # "cost": filtered search takes the cheaper path; "always": the index
        self.short_walks = ShortWalks()  # per filter, its walks that ended short of k rows (`_plan`)
        self._keepalive = keepalive  # a pgserver handle: the database lives as long as the store
        self._local = threading.local()
        self._conns: list = []
        self._conns_lock = threading.Lock()
        t = sql.Identifier(table)
        self._sql = {
            "t": t,
            "fields": sql.Identifier(table + "_fields"),
            "index": sql.Identifier(table + "_hnsw"),
            "version": sql.Identifier(table + "_version"),
            "space": sql.Identifier(table + "_space"),
            "create_index": sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_ip_ops) "
                "WITH (m = {}, ef_construction = {})"
            ).format(sql.Identifier(table + "_hnsw"), t, sql.Literal(m), sql.Literal(ef_construction)),
            # metadata filters (JSONB containment) by index: a selective filter ranks only its rows
            "create_meta_index": sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} USING gin (metadata jsonb_path_ops)"
            ).format(sql.Identifier(table + "_meta"), t),
            "drop_indexes": sql.SQL("DROP INDEX IF EXISTS {}, {}").format(
                sql.Identifier(table + "_hnsw"), sql.Identifier(table + "_meta")
            ),
        }
        conn = self._conn(register=False)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('lookalike-store-schema'))")
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                row = conn.execute(
                    "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
                    (table,),
                ).fetchone()
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
                        "label text NOT NULL)"
                    ).format(self._sql["space"])
                )
                if row is not None and space is not None:  # before the dimension: a space mismatch is the better error
                    have = conn.execute(sql.SQL("SELECT label FROM {}").format(self._sql["space"])).fetchone()
                    rows = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(t)).fetchone()
                    self.check_space(space, None if have is None else have[0], int(bool(rows and rows[0])))
                if row is not None:
                    if dim is not None and dim != row[0]:
                        raise LookalikeError(f"table {table} holds {row[0]}-d vectors, asked for {dim}")
                    dim = row[0]
                elif dim is None:
                    raise LookalikeError(f"table {table} does not exist yet: give the vector dimension")
                self.dim = int(dim)
                conn.execute(
                    sql.SQL(
                        'CREATE TABLE IF NOT EXISTS {} (id text COLLATE "C" PRIMARY KEY, '
                        "embedding vector({}) NOT NULL, metadata jsonb NOT NULL)"
                    ).format(t, sql.Literal(self.dim))
                )
                # 512 floats alone pass the TOAST threshold. Kept inline, a scan need not fetch them from elsewhere;
                # and the metadata (MAIN: out of line only if the row would not fit a page) stays beside them, else
                # every filter check, on either search path, fetches it from the TOAST table (an index lookup and
                # another page per row). New rows only: an older table's rows move back inline when rewritten
                # (VACUUM FULL).
                conn.execute(
                    sql.SQL(
                        "ALTER TABLE {} ALTER COLUMN embedding SET STORAGE PLAIN, "
                        "ALTER COLUMN metadata SET STORAGE MAIN"
                    ).format(t)
                )
                conn.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {} (field text PRIMARY KEY)").format(self._sql["fields"])
                )
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
                        "v bigint NOT NULL)"
                    ).format(self._sql["version"])
                )
                conn.execute(
                    sql.SQL("INSERT INTO {} VALUES (true, 0) ON CONFLICT DO NOTHING").format(self._sql["version"])
                )
                self._set_up_counts(conn, table + "_version")
                self._build_index(conn)  # no-op when it exists; after a crashed bulk load, rebuilds it
        except psycopg.Error as e:
            raise LookalikeError(f"cannot set up table {table}: {_one_line(e)}") from None
        from pgvector.psycopg import register_vector

        register_vector(conn)
        self._field_cache = self._read_fields()
        if space is not None:
            self.use_space(space)

    def where(self) -> str:
        return f"table {self.table}"

    def recorded_space(self) -> str | None:
        from psycopg import sql

        row = self._conn().execute(sql.SQL("SELECT label FROM {}").format(self._sql["space"])).fetchone()
        return None if row is None else str(row[0])

    def _record_space(self, label: str) -> None:
        from psycopg import sql

        self._conn().execute(
            sql.SQL("INSERT INTO {} (label) VALUES (%s) ON CONFLICT DO NOTHING").format(self._sql["space"]), (label,)
        )

    def _conn(self, register: bool = True):
        """One connection per thread (psycopg connections are not for concurrent use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg

            try:
                conn = psycopg.connect(self.conninfo, autocommit=True)
            except psycopg.Error as e:
                raise LookalikeError(
                    f"cannot connect to PostgreSQL at {_where(self.conninfo)}: {_one_line(e)}"
                ) from None
            if register:
                from pgvector.psycopg import register_vector

                register_vector(conn)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _set_up_counts(self, conn, version_table: str) -> None:
        """The counts column (added to a table made before the store kept counts) and, where it is empty, the
        table's size: one count at the first open, under the schema lock."""
        from psycopg import sql
        from psycopg.types.json import Jsonb

        has = conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'counts' AND NOT attisdropped",
            (version_table,),
        ).fetchone()
        if not has:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN counts jsonb").format(self._sql["version"]))
        if conn.execute(sql.SQL("SELECT counts IS NULL FROM {}").format(self._sql["version"])).fetchone()[0]:
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._sql["t"])).fetchone()[0]
            conn.execute(
                sql.SQL("UPDATE {} SET counts = %s").format(self._sql["version"]), (Jsonb(Tally(size=n).to_json()),)
            )

    def _read_counts(self, conn, lock: bool = False) -> tuple[int, Tally]:
        """(version, counts); with `lock`, the row stays locked until the transaction ends (writers queue here)."""
        from psycopg import sql

        q = sql.SQL("SELECT v, counts FROM {}" + (" FOR UPDATE" if lock else "")).format(self._sql["version"])
        v, counts = conn.execute(q).fetchone()
        return v, Tally.from_json(counts)

    def _save_counts(self, conn, tally: Tally) -> int:
        """Count a write inside its own transaction, so `version()` and `counts()` move exactly when the rows do."""
        from psycopg import sql
        from psycopg.types.json import Jsonb

        q = sql.SQL("UPDATE {} SET v = v + 1, counts = %(c)s RETURNING v").format(self._sql["version"])
        return conn.execute(q, {"c": Jsonb(tally.to_json())}).fetchone()[0]

    @staticmethod
    def _counted(keys: list[str]) -> tuple[object, dict]:
        """SELECT-list of the counted metadata fields (names as parameters), and its parameters."""
        from psycopg import sql

        if not keys:
            return sql.SQL("NULL"), {}
        cols = [sql.SQL("metadata -> {}::text").format(sql.Placeholder(f"k{i}")) for i in range(len(keys))]
        return sql.SQL(", ").join(cols), {f"k{i}": k for i, k in enumerate(keys)}

    def _read_fields(self) -> set[str]:
        from psycopg import sql

        return {r[0] for r in self._conn().execute(sql.SQL("SELECT field FROM {}").format(self._sql["fields"]))}

    # --- writes ------------------------------------------------------------------------------------
    def upsert(self, items: Iterable[StoreItem]) -> int:

        new = sorted(check_items(items, self.dim), key=lambda it: it.id)
        if not new:
            return 0
        conn = self._conn()
        # Rebuilding the HNSW graph over all rows beats inserting into it only when the batch is a large
        # share of the table (pgvector builds far faster over loaded rows than row by row).
        rebuild = len(new) >= BULK and len(new) >= len(self) // 4
        with conn.transaction():
            if rebuild:
                conn.execute(self._sql["drop_indexes"])
            self._write(conn, new)
            if rebuild:
                self._build_index(conn)
        self._field_cache |= {f for it in new for f in it.metadata}
        return len(new)

    def load(self, batches: Iterable[Iterable[StoreItem]], total: int | None = None) -> int:
        """Each batch COPYs (binary) and merges in its own transaction; when the load (`total`) is large against
        the table, the indexes are dropped first and built once after the last batch. A crash midway keeps
        the committed batches (each row whole: id, vector and metadata together) and the next open of the
        store rebuilds a missing index."""
        from psycopg import sql

        conn = self._conn()
        defer = total is not None and total >= BULK and total >= len(self) // 4  # unknown size: keep the index
        dropped, n, t0 = False, 0, time.perf_counter()
        for batch in batches:
            new = sorted(check_items(batch, self.dim), key=lambda it: it.id)
            if not new:
                continue
            if defer and not dropped:
                conn.execute(self._sql["drop_indexes"])
                dropped = True
            with conn.transaction():
                self._write(conn, new)
            self._field_cache |= {f for it in new for f in it.metadata}
            n += len(new)
        t1 = time.perf_counter()
        if dropped:
            with conn.transaction():
                self._build_index(conn)
        if n:
            conn.execute(sql.SQL("ANALYZE {}").format(self._sql["t"]))  # the planner's estimates see the new rows
        self.last_load = {
            "rows": n,
            "load_s": round(t1 - t0, 2),
            "index_build_s": round(time.perf_counter() - t1, 2),
            "index_deferred": dropped,
        }
        return n

    def _write(self, conn, new: list[StoreItem]) -> None:
        """COPY (binary) into a temp table, then one merge in id order; the counts change by the replaced rows'
        counted fields and the new rows', under the lock on the counts row that every writer takes first."""
        from psycopg import sql
        from psycopg.types.json import Jsonb

        _, tally = self._read_counts(conn, lock=True)
        cols, params = self._counted(tally.keys)
        old = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = ANY(%(ids)s)").format(cols, self._sql["t"]),
            {**params, "ids": [it.id for it in new]},
        ).fetchall()
        for row in old:
            tally.add(dict(zip(tally.keys, row)), -1)
        for it in new:
            tally.add(it.metadata)

        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE lookalike_upsert (id text, embedding vector({}), metadata jsonb) ON COMMIT DROP"
            ).format(sql.Literal(self.dim))
        )
        with conn.cursor().copy(
            "COPY lookalike_upsert (id, embedding, metadata) FROM STDIN WITH (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["text", "vector", "jsonb"])
            for it in new:
                cp.write_row([it.id, it.vector, Jsonb(it.metadata)])
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, embedding, metadata) SELECT id, embedding, metadata "
                'FROM lookalike_upsert ORDER BY id COLLATE "C" ON CONFLICT (id) DO UPDATE '
                "SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata"
            ).format(self._sql["t"])
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (field) SELECT DISTINCT jsonb_object_keys(metadata) FROM lookalike_upsert "
                "ORDER BY 1 ON CONFLICT DO NOTHING"
            ).format(self._sql["fields"])
        )
        self._save_counts(conn, tally)

    def version(self) -> int:
        from psycopg import sql

        return self._conn().execute(sql.SQL("SELECT v FROM {}").format(self._sql["version"])).fetchone()[0]

    def _build_index(self, conn) -> None:
        """The HNSW graph (and the metadata index) over all loaded rows, with the memory and parallel workers
        a 1M-row build needs."""
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (self.maintenance_work_mem,))
        conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, true)", (str(self.build_workers),))
        conn.execute(self._sql["create_index"])
        conn.execute(self._sql["create_meta_index"])

    def delete(self, ids: Iterable[str]) -> int:
        from psycopg import sql

        ids = sorted(set(ids))
        if not ids:
            return 0
        conn = self._conn()
        with conn.transaction():
            _, tally = self._read_counts(conn, lock=True)
            cols, params = self._counted(tally.keys)
            gone = conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%(ids)s) RETURNING {}").format(self._sql["t"], cols),
                {**params, "ids": ids},
            ).fetchall()
            for row in gone:
                tally.add(dict(zip(tally.keys, row)), -1)
            if gone:
                self._save_counts(conn, tally)
        return len(gone)

    def count_by(self, fields: Iterable[str] = (), flag: str | None = None) -> StoreCounts:
        from psycopg import sql

        fields = list(fields)
        conn = self._conn()
        v, tally = self._read_counts(conn)
        if tally.covers(fields, flag):
            return tally.counts(v)
        with conn.transaction():
            v, tally = self._read_counts(conn, lock=True)
            if not tally.covers(fields, flag):
                tally = tally.widened(fields, flag)
                cols, params = self._counted(tally.keys)
                group = sql.SQL(" GROUP BY " + ", ".join(str(i + 1) for i in range(len(tally.keys))))
                rows = conn.execute(
                    sql.SQL("SELECT {}, count(*) FROM {}").format(cols, self._sql["t"])
                    + (group if tally.keys else sql.SQL("")),
                    params,
                ).fetchall()
                for *values, n in rows:
                    tally.add(dict(zip(tally.keys, values)), n)
                v = self._save_counts(conn, tally)
        return tally.counts(v)

    def counts(self) -> StoreCounts:
        v, tally = self._read_counts(self._conn())
        return tally.counts(v)

    # --- reads -------------------------------------------------------------------------------------
    def get(self, id: str) -> StoreItem | None:
        from psycopg import sql

        row = (
            self._conn()
            .execute(sql.SQL("SELECT id, embedding, metadata FROM {} WHERE id = %s").format(self._sql["t"]), (id,))
            .fetchone()
        )
        return None if row is None else StoreItem(row[0], _array(row[1]), row[2])

    def get_many(self, ids: list[str]) -> list[StoreItem | None]:
        from psycopg import sql

        rows = (
            self._conn()
            .execute(
                sql.SQL("SELECT id, embedding, metadata FROM {} WHERE id = ANY(%s)").format(self._sql["t"]),
                (list(ids),),
            )
            .fetchall()
        )
        found = {r[0]: StoreItem(r[0], _array(r[1]), r[2]) for r in rows}
        return [found.get(i) for i in ids]

    def ids(self, offset: int = 0, limit: int | None = None) -> list[str]:
        from psycopg import sql

        q = sql.SQL("SELECT id FROM {} ORDER BY id OFFSET %s LIMIT %s").format(self._sql["t"])
        return [r[0] for r in self._conn().execute(q, (offset, limit))]

    def fields(self) -> set[str]:
        self._field_cache = self._read_fields()
        return set(self._field_cache)

    def items(self) -> tuple[list[str], np.ndarray, list[dict]]:
        from psycopg import sql

        with self._conn().cursor(binary=True) as cur:
            rows = cur.execute(
                sql.SQL("SELECT id, embedding, metadata FROM {} ORDER BY id").format(self._sql["t"])
            ).fetchall()
        vecs = np.stack([_array(r[1]) for r in rows]) if rows else np.zeros((0, self.dim), np.float32)
        return [r[0] for r in rows], vecs, [r[2] for r in rows]

    def _where(self, filters: dict[str, list], exclude_ids: list[str] | None) -> tuple[object, dict]:
        """WHERE clause and its named parameters. A filter value matches a scalar field equal to it or a
        list field containing it (JSONB containment, as the embedded store does)."""
        from psycopg import sql
        from psycopg.types.json import Jsonb

        parts: list[sql.Composable] = []
        params: dict[str, object] = {}

        def param(value) -> sql.Composable:
            name = f"p{len(params)}"
            params[name] = value
            return sql.Placeholder(name)

        for f, vals in filters.items():
            alts = []
            for v in vals:
                alts.append(sql.SQL("metadata @> {}").format(param(Jsonb({f: v}))))
                if isinstance(v, str):
                    alts.append(sql.SQL("metadata @> {}").format(param(Jsonb({f: [v]}))))
            parts.append(sql.SQL("(") + sql.SQL(" OR ").join(alts) + sql.SQL(")"))
        if exclude_ids:
            parts.append(sql.SQL("NOT (id = ANY({}))").format(param(list(exclude_ids))))
        if not parts:
            return sql.SQL(""), params
        return sql.SQL("WHERE ") + sql.SQL(" AND ").join(parts), params

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exact: bool = True,
        exclude_ids: list[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        q = check_queries(queries, self.dim, k)
        if any(f not in self._field_cache for f in (filters or {})):
            self._field_cache = self._read_fields()
        flt = normalize_filters(filters, self._field_cache)
        where, params = self._where(flt, exclude_ids)
        path, budget = (EXACT, None) if exact else self._plan(flt, k)
        hits = self._run(path, where, params, q, k, budget)
        # A filtered walk that ended (its budget spent, or pgvector's scan limits) before k rows passed met a
        # filter whose rows lie away from the query: those queries are ranked exactly instead, so their answers
        # are whole.
        short = [i for i, h in enumerate(hits) if len(h) < k] if path == INDEX and flt else []
        if budget is not None:
            self.short_walks.add(filter_key(flt), len(q), len(short))
        if short:
            for i, h in zip(short, self._run(EXACT, where, params, q[short], k)):
                hits[i] = h
            self.path_counts[INDEX_THEN_EXACT] += len(short)
        if len(q) > len(short):
            self.path_counts[path] += len(q) - len(short)
        return hits

    def _run(
        self, path: str, where, params: dict, q: np.ndarray, k: int, budget: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """The queries on one path, in one transaction whose settings pick it. Exact: every row that passes,
        ties by id, each distance computed once, index scans off (the GIN index still finds the rows). Index:
        HNSW with iterative scans (pgvector hands up rows nearest first until k pass), forced (the planner would
        otherwise pick its own path: the choice is `_plan`'s, by measured cost); it needs ORDER BY the distance
        expression, and its relaxed order is sorted here. With a `budget`, the walk hands up at most that many
        rows (a subquery's LIMIT; the filter applies outside it)."""
        from psycopg import sql

        t = self._sql["t"]
        stmt: sql.Composable
        if path == EXACT:
            settings = "SELECT set_config('enable_indexscan', 'off', true)"
            stmt = sql.SQL("SELECT id, (embedding <#> %(q)s) * -1 FROM {} {} ORDER BY 2 DESC, id LIMIT %(k)s")
            stmt = stmt.format(t, where)
        else:
            settings = (
                "SELECT set_config('hnsw.ef_search', %(ef)s, true), set_config('hnsw.iterative_scan', "
                "'relaxed_order', true), set_config('enable_bitmapscan', 'off', true), "
                "set_config('enable_seqscan', 'off', true)"
            )
            if budget is None:
                stmt = sql.SQL(
                    "SELECT id, (embedding <#> %(q)s) * -1 FROM {} {} ORDER BY embedding <#> %(q)s LIMIT %(k)s"
                )
                stmt = stmt.format(t, where)
            else:
                stmt = sql.SQL(
                    "SELECT id, s FROM (SELECT id, metadata, (embedding <#> %(q)s) * -1 AS s FROM {} "
                    "ORDER BY embedding <#> %(q)s LIMIT %(budget)s) c {} LIMIT %(k)s"
                ).format(t, where)
        conn = self._conn()
        out = []
        with conn.transaction():
            conn.execute(settings, {"ef": str(max(self.ef_search, k))})
            with conn.cursor(binary=True) as cur:
                for v in q:
                    rows = cur.execute(stmt, {**params, "q": v, "k": int(k), "budget": budget}).fetchall()
                    out.append(sorted(((r[0], float(r[1])) for r in rows), key=lambda h: (-h[1], h[0])))
        return out

    def _plan(self, flt: dict[str, list], k: int) -> tuple[str, int | None]:
        """How an approximate search with these (normalized) filters runs, and the walk's budget: `exact`, or
        `index` (no filter: always), whichever `COSTS` says is cheaper for the rows the planner expects to pass.
        A walk may hand up as many rows as `COSTS` says an exact ranking would cost: more, and its filter passes
        rows away from the query (a correlated filter: a brand, a category), so the walk stops and the rows are
        ranked exactly (at most twice the exact cost, never a walk that runs on). The walk is priced with the
        share of this filter's walks that ended so. `index_path = "always"` skips the choice and the budget (the
        benchmark measures the walk on its own that way)."""
        if not flt or self.index_path == "always":
            return INDEX, None
        passing, total = self._estimated_rows(flt)
        exact_ms, short = COSTS.exact(passing), self.short_walks.share(filter_key(flt))
        if COSTS.choose(passing, self._index_units(passing, total, k), short, short_ms=exact_ms) == EXACT:
            return EXACT, None
        budget = COSTS.index_units_for(exact_ms)
        return INDEX, int(budget) if math.isfinite(budget) else None

    def _index_units(self, passing: float, total: float, k: int) -> float:
        """The index walk's work: the rows it hands up, nearest first, until k pass (~k × total / passing for
        a filter independent of the vectors), at least its first batch (ef_search)."""
        return max(self.ef_search, k, k * total / max(passing, 1.0))

    def _estimated_rows(self, flt: dict[str, list]) -> tuple[float, float]:
        """The planner's estimates of the rows passing the filters and of all rows (statistics; nothing is
        scanned; one statement, its plan has both)."""
        from psycopg import sql

        where, params = self._where(flt, None)
        stmt = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} {} UNION ALL SELECT 1 FROM {}")
        plan = self._conn().execute(stmt.format(self._sql["t"], where, self._sql["t"]), params).fetchone()[0]
        passing, total = (float(p["Plan Rows"]) for p in plan[0]["Plan"]["Plans"])
        return passing, total

    def close(self) -> None:
        with self._conns_lock:
            for c in self._conns:
                c.close()
            self._conns.clear()

    def release(self) -> None:
        """Close, and drop this process from an in-process pgserver's holders (stopping it if it was the last).
        pgserver does that at exit, but a process killed by its signal's default action (uvicorn re-raises
        SIGTERM after a graceful shutdown) never runs its exit handlers, and its stale entry would keep
        the server running forever."""
        self.close()
        if self._keepalive is not None:
            self._keepalive.cleanup()
            self._keepalive = None
