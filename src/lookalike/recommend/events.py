"""Events: what customers did after a recommendation (impressions, clicks, carts, purchases), stored durably beside
the catalogue, and the online KPIs kept from them.

Events are the source of truth, as in Gorse or Metarank. They live next to the vector store: a table in the
pgvector database (through the store's own per-thread connections) or a SQLite file in WAL mode beside the
embedded store (`synchronous=FULL`: a batch is on disk before it is acknowledged, so it survives `kill -9`).

- An event is idempotent on `event_id`: a second copy is counted as a duplicate and changes nothing.
- Every recommendation the service answers is logged as a *served list* (its `request_id`, endpoint, variant and
  ids), so an event that cites the `request_id` is attributed to that endpoint and variant, and a click or a
  purchase of a listed product marks the list as clicked / bought.
- The KPI counters (events per type, endpoint and variant; lists served, clicked in their top 10, bought; new
  products shown at least once) change in the same transaction as the events that move them, so reading them is
  one small query whatever the size of the log, and they are never half-updated.
- So do the units sold per product and UTC day (one unit per stored purchase event): top10_to_new takes its best
  sellers from them (units over a window of days), reading at most (products sold × days in the window) rows of
  that table, never the log.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lookalike.errors import LookalikeError
from lookalike.retrieval.stores import VectorStore

logger = logging.getLogger(__name__)

EVENT_TYPES = ("impression", "click", "cart", "purchase")
MAX_FUTURE_S = 300.0  # clock skew allowed between a client and the server
CTR_AT = 10  # a list counts as clicked when one of its first CTR_AT items is clicked
MAX_ID = 256
NONE = "none"  # the variant of events and lists outside any experiment
UNATTRIBUTED = "unattributed"  # the endpoint of events that cite no (known) served list
SQLITE_FILE = "events.sqlite"
FILE_FIELDS = ("event_id", "customer_id", "type", "product_id", "ts", "request_id", "variant")
DAY_S = 86_400
BEST_SELLER_WINDOW_DAYS = 30


def day_of(ts: float) -> int:
    """The UTC day number of an epoch time (the sales table's bucket)."""
    return math.floor(ts / DAY_S)


def parse_window(text: str | int) -> int:
    """A best-seller window in days from `30d`, `4w` or a bare number of days; ValueError naming the value."""
    raw = str(text).strip().lower()
    scale = {"d": 1, "w": 7}.get(raw[-1:])
    digits = raw[:-1] if scale else raw
    if not digits.isdigit() or int(digits) * (scale or 1) < 1:
        raise ValueError(f"best-seller window {text!r} must be a whole number of days or weeks, e.g. 30d or 4w")
    return int(digits) * (scale or 1)


@dataclass(frozen=True)
class Event:
    event_id: str
    customer_id: str
    type: str
    product_id: str
    ts: float  # seconds since the epoch, UTC
    request_id: str | None = None
    variant: str | None = None


def parse_ts(value: object, now: float) -> float:
    """An ISO-8601 time (a naive one is UTC) as epoch seconds; ValueError with the reason otherwise."""
    if value is None:
        raise ValueError("missing ts")
    if not isinstance(value, str):
        raise ValueError(f"malformed timestamp {value!r}: an ISO-8601 string is expected")
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"malformed timestamp {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    ts = t.timestamp()
    if not math.isfinite(ts):
        raise ValueError(f"malformed timestamp {value!r}")
    if ts > now + MAX_FUTURE_S:
        raise ValueError(f"timestamp {value!r} is in the future")
    return ts


def _text(raw: Mapping, field: str, required: bool = True) -> str | None:
    v = raw.get(field)
    if v is None or v == "":
        if required:
            raise ValueError(f"missing {field}")
        return None
    if not isinstance(v, str) or len(v) > MAX_ID:
        raise ValueError(f"{field} must be a string of at most {MAX_ID} characters, got {str(v)[:40]!r}")
    return v


def parse_event(raw: object, now: float) -> Event:
    """One event from its JSON object; ValueError naming the field and value when it is malformed (whether
    the product exists is the log's check, `EventLog.add`)."""
    if not isinstance(raw, Mapping):
        raise ValueError("an event must be a JSON object")
    kind = raw.get("type")
    if kind is None:
        raise ValueError("missing type")
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r} (one of {', '.join(EVENT_TYPES)})")
    variant = _text(raw, "variant", required=False)
    if variant is not None and "|" in variant:
        raise ValueError(f"variant {variant!r} must not contain '|'")
    return Event(
        event_id=_text(raw, "event_id"),  # type: ignore[arg-type]  # required: never None
        customer_id=_text(raw, "customer_id"),  # type: ignore[arg-type]
        type=kind,
        product_id=_text(raw, "product_id"),  # type: ignore[arg-type]
        ts=parse_ts(raw.get("ts"), now),
        request_id=_text(raw, "request_id", required=False),
        variant=variant,
    )


@dataclass
class AddResult:
    accepted: int
    duplicates: int
    rejected: list[dict]

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


class EventLog(ABC):
    """Events, served lists and KPI counters in one database; every method is one transaction."""

    placeholder = "%s"

    def __init__(self, store: VectorStore, prefix: str = ""):
        self.store = store
        p = prefix
        self.t = {
            "events": f"{p}events",
            "served": f"{p}served",
            "kpi": f"{p}kpi",
            "shown": f"{p}shown",
            "sales": f"{p}sales",
        }

    day_sql = "CAST(ts / 86400 AS INTEGER)"  # SQL for day_of(ts) (SQLite truncates; the times are after 1970)

    # --- the database, per backend ------------------------------------------------------------------
    @abstractmethod
    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A connection in a write transaction (committed on exit, rolled back on an exception)."""

    @abstractmethod
    def _read(self) -> Any:
        """A connection for a read (autocommit)."""

    def _sql(self, q: str) -> str:
        return q.format(**self.t).replace("%s", self.placeholder)

    def _schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS {events} (event_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, "
            "type TEXT NOT NULL, product_id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, request_id TEXT, "
            "variant TEXT NOT NULL, endpoint TEXT NOT NULL, received DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS {events}_customer ON {events} (customer_id, ts)",
            "CREATE TABLE IF NOT EXISTS {served} (request_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, "
            "variant TEXT NOT NULL, customer_id TEXT, ids TEXT NOT NULL, clicked INTEGER NOT NULL DEFAULT 0, "
            "purchased INTEGER NOT NULL DEFAULT 0, ts DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {kpi} (key TEXT PRIMARY KEY, n BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {shown} (product_id TEXT PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS {sales} (product_id TEXT NOT NULL, day BIGINT NOT NULL, units BIGINT NOT NULL, "
            "PRIMARY KEY (product_id, day))",
            "CREATE INDEX IF NOT EXISTS {sales}_day ON {sales} (day)",
        ]

    def _backfill_sales(self, conn) -> None:
        """A log written before the sales table existed: its purchases counted once, at opening (every purchase
        stored since moves the table in its own transaction, so an empty table beside purchases means exactly
        this)."""
        if conn.execute(self._sql("SELECT 1 FROM {sales} LIMIT 1")).fetchone() is not None:
            return
        q = (
            "INSERT INTO {sales} (product_id, day, units) SELECT product_id, " + self.day_sql + ", count(*) "
            "FROM {events} WHERE type = 'purchase' GROUP BY product_id, " + self.day_sql
        )
        conn.execute(self._sql(q))

    # --- writes -------------------------------------------------------------------------------------
    def add(self, raw: list, now: float | None = None) -> AddResult:
        """Validate and store a batch: the valid events not stored before are written with the KPI counters they
        move, in one transaction; the others are counted as duplicates or listed as rejected (index, reason)."""
        now = datetime.now(UTC).timestamp() if now is None else now
        rejected: list[dict] = []
        parsed: list[tuple[int, Event]] = []
        for i, r in enumerate(raw):
            try:
                parsed.append((i, parse_event(r, now)))
            except ValueError as err:
                rejected.append({"index": i, "reason": str(err)})
        items = self.store.get_many(list(dict.fromkeys(e.product_id for _, e in parsed)))
        known = {it.id: it.metadata.get("is_new") is True for it in items if it is not None}
        good: list[Event] = []
        for i, e in parsed:
            if e.product_id not in known:
                rejected.append({"index": i, "reason": f"unknown product id {e.product_id!r}"})
            else:
                good.append(e)
        rejected.sort(key=lambda r: r["index"])
        accepted = self._write(good, known, now) if good else 0
        return AddResult(accepted, len(good) - accepted, rejected)

    def _write(self, events: list[Event], is_new: dict[str, bool], now: float) -> int:
        """One transaction, a few statements whatever the batch's size: the cited lists read at once, the events
        inserted at once (those already stored skipped), then the lists they mark, the new products first shown and
        the counters."""
        mark = {
            "click": self._sql("UPDATE {served} SET clicked = 1 WHERE request_id = %s AND clicked = 0"),
            "purchase": self._sql("UPDATE {served} SET purchased = 1 WHERE request_id = %s AND purchased = 0"),
        }
        delta: dict[str, int] = {}
        with self._tx() as conn:
            rids = sorted({e.request_id for e in events if e.request_id})
            served = {}
            if rids:
                q = "SELECT request_id, endpoint, variant, ids FROM {served} WHERE request_id IN (%s)"
                rows = conn.execute(self._sql(q.replace("%s", ", ".join(["%s"] * len(rids)))), rids).fetchall()
                served = {r[0]: (r[1], r[2], r[3]) for r in rows}
            rows, seen = [], set()
            for e in events:
                if e.event_id in seen:
                    continue  # twice in this batch: the first one counts
                seen.add(e.event_id)
                cited = served.get(e.request_id) if e.request_id else None
                endpoint = cited[0] if cited else UNATTRIBUTED
                variant = e.variant or (cited[1] if cited else NONE)
                rows.append((e, cited, endpoint, variant))
            q = (
                "INSERT INTO {events} (event_id, customer_id, type, product_id, ts, request_id, variant, endpoint, "
                "received) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
                + " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
            )
            params = [
                x
                for e, _, endpoint, variant in rows
                for x in (e.event_id, e.customer_id, e.type, e.product_id, e.ts, e.request_id, variant, endpoint, now)
            ]
            stored = {r[0] for r in conn.execute(self._sql(q), params).fetchall()}
            shown: list[str] = []
            sold: dict[tuple[str, int], int] = {}
            for e, cited, endpoint, variant in rows:
                if e.event_id not in stored:
                    continue  # stored before: a duplicate
                _bump(delta, f"events|{e.type}|{endpoint}|{variant}")
                if e.type == "purchase":
                    key = (e.product_id, day_of(e.ts))
                    sold[key] = sold.get(key, 0) + 1
                if cited and e.type in mark:
                    ids = json.loads(cited[2])
                    listed = ids[:CTR_AT] if e.type == "click" else ids
                    if e.product_id in listed and conn.execute(mark[e.type], (e.request_id,)).rowcount == 1:
                        _bump(delta, f"lists_{'clicked' if e.type == 'click' else 'purchased'}|{endpoint}|{variant}")
                if e.type == "impression" and is_new.get(e.product_id):
                    shown.append(e.product_id)
            shown = sorted(set(shown))
            if shown:
                q = "INSERT INTO {shown} (product_id) VALUES " + ", ".join(["(%s)"] * len(shown))
                q += " ON CONFLICT (product_id) DO NOTHING RETURNING product_id"
                first = len(conn.execute(self._sql(q), shown).fetchall())
                if first:
                    _bump(delta, "new_shown", first)
            self._count(conn, delta)
            self._sell(conn, sold)
        return len(stored)

    def _sell(self, conn, sold: dict[tuple[str, int], int]) -> None:
        """Add units to the per-product, per-day sales in one statement (keys sorted, as the counters)."""
        if not sold:
            return
        keys = sorted(sold)
        q = "INSERT INTO {sales} (product_id, day, units) VALUES " + ", ".join(["(%s, %s, %s)"] * len(keys))
        q += " ON CONFLICT (product_id, day) DO UPDATE SET units = {sales}.units + excluded.units"
        conn.execute(self._sql(q), [x for k in keys for x in (k[0], k[1], sold[k])])

    def served(
        self, request_id: str, endpoint: str, ids: list[str], variant: str | None = None, customer_id: str | None = None
    ) -> None:
        """Log a recommendation list the service answered (for attribution, CTR@10 and purchase rate)."""
        q = self._sql(
            "INSERT INTO {served} (request_id, endpoint, variant, customer_id, ids, ts) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (request_id) DO NOTHING"
        )
        variant = variant or NONE
        with self._tx() as conn:
            row = (request_id, endpoint, variant, customer_id, json.dumps(ids), datetime.now(UTC).timestamp())
            if conn.execute(q, row).rowcount == 1:
                self._count(conn, {f"lists_served|{endpoint}|{variant}": 1})

    def _count(self, conn, delta: dict[str, int]) -> None:
        """Add to the counters in one statement, keys in sorted order (two writers never lock them in opposite
        orders)."""
        if not delta:
            return
        keys = sorted(delta)
        q = "INSERT INTO {kpi} (key, n) VALUES " + ", ".join(["(%s, %s)"] * len(keys))
        q += " ON CONFLICT (key) DO UPDATE SET n = {kpi}.n + excluded.n"
        conn.execute(self._sql(q), [x for k in keys for x in (k, delta[k])])

    # --- reads --------------------------------------------------------------------------------------
    def history(self, customer_id: str, limit: int = 50) -> list[tuple[str, str, float]]:
        """The customer's latest `limit` events other than impressions, oldest first: (product id, type, ts)."""
        q = self._sql(
            "SELECT product_id, type, ts FROM {events} WHERE customer_id = %s AND type <> 'impression' "
            "ORDER BY ts DESC, event_id DESC LIMIT %s"
        )
        return [(r[0], r[1], float(r[2])) for r in reversed(self._read().execute(q, (customer_id, limit)).fetchall())]

    def purchases(self) -> int:
        """Purchase events stored (from the counters: one small read)."""
        q = self._sql("SELECT COALESCE(SUM(n), 0) FROM {kpi} WHERE key LIKE 'events|purchase|%'")
        return int(self._read().execute(q).fetchone()[0])

    def best_sellers(
        self, window_days: int, limit: int, offset: int = 0, now: float | None = None
    ) -> tuple[list[tuple[str, int]], int]:
        """The products most sold over the last `window_days` UTC days (today included), by units then id:
        `limit` of them from `offset`, and how many products sold in the window."""
        since = day_of(datetime.now(UTC).timestamp() if now is None else now) - window_days + 1
        conn = self._read()
        q = self._sql("SELECT count(DISTINCT product_id) FROM {sales} WHERE day >= %s")
        n = int(conn.execute(q, (since,)).fetchone()[0])
        q = self._sql(
            "SELECT product_id, SUM(units) AS u FROM {sales} WHERE day >= %s GROUP BY product_id "
            "ORDER BY u DESC, product_id LIMIT %s OFFSET %s"
        )
        return [(r[0], int(r[1])) for r in conn.execute(q, (since, limit, offset)).fetchall()], n

    def units_sold(self, window_days: int, now: float | None = None) -> dict[str, int]:
        """Units per product over the window (the background statistics' Spearman; never on a request)."""
        rows, _ = self.best_sellers(window_days, 2**62, 0, now)
        return dict(rows)

    def counters(self) -> dict[str, int]:
        return {k: int(n) for k, n in self._read().execute(self._sql("SELECT key, n FROM {kpi}")).fetchall()}

    def count_stored(self, event_ids: list[str]) -> int:
        """How many of these event ids are stored (the reliability checks)."""
        q = self._sql("SELECT count(*) FROM {events} WHERE event_id = %s")
        conn = self._read()
        return sum(int(conn.execute(q, (i,)).fetchone()[0]) for i in event_ids)

    def stored(self) -> int:
        """How many events are stored, counted row by row (the reliability checks; never on a request)."""
        return int(self._read().execute(self._sql("SELECT count(*) FROM {events}")).fetchone()[0])

    def kpi(self, new_products: int | None = None) -> dict:
        """The online KPIs from the counters: per endpoint and per variant, events by type, lists served, CTR
        (clicks / impressions), CTR@10 (lists with a click in their top 10 / lists served) and purchase rate
        (lists with a purchase of a listed product / lists served); and the share of the new collection shown."""
        return online_kpi(self.counters(), new_products)

    def close(self) -> None:  # noqa: B027 (a backend with nothing of its own to close inherits this)
        """Release what the log holds of its own."""


def _bump(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def online_kpi(counters: dict[str, int], new_products: int | None = None) -> dict:
    """The counters arranged per endpoint and per variant, with the rates computed from them."""
    groups: dict[str, dict[str, dict[str, int]]] = {"per_endpoint": {}, "per_variant": {}}

    def add(endpoint: str, variant: str, name: str, n: int) -> None:
        for group, key in (("per_endpoint", endpoint), ("per_variant", variant)):
            g = groups[group].setdefault(key, {})
            g[name] = g.get(name, 0) + n

    for key, n in counters.items():
        parts = key.split("|")
        if parts[0] == "events" and len(parts) == 4:
            add(parts[2], parts[3], parts[1] + "s", n)
        elif parts[0].startswith("lists_") and len(parts) == 3:
            add(parts[1], parts[2], parts[0], n)
    out: dict[str, Any] = {}
    for group, rows in groups.items():
        out[group] = {}
        for key, c in sorted(rows.items()):
            row: dict[str, Any] = {t + "s": c.get(t + "s", 0) for t in EVENT_TYPES}
            row.update({k: c.get(k, 0) for k in ("lists_served", "lists_clicked", "lists_purchased")})
            row["ctr"] = _rate(row["clicks"], row["impressions"])
            row[f"ctr@{CTR_AT}"] = _rate(row["lists_clicked"], row["lists_served"])
            row["purchase_rate"] = _rate(row["lists_purchased"], row["lists_served"])
            out[group][key] = row
    shown = counters.get("new_shown", 0)
    out["new_collection"] = {
        "shown": shown,
        "size": new_products,
        "coverage": _rate(shown, new_products) if new_products else None,
    }
    out["events"] = sum(n for k, n in counters.items() if k.startswith("events|"))
    return out


def read_rows(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, event object or None for a line that is not a JSON object) of a CSV or JSONL file."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed below, also on errors)
    except OSError as e:
        raise LookalikeError(f"cannot read events file {path}: {e}") from None
    with f:
        try:
            if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    yield n, row if isinstance(row, dict) else None
            else:
                reader = csv.DictReader(f)
                missing = [
                    c
                    for c in ("event_id", "customer_id", "type", "product_id", "ts")
                    if c not in (reader.fieldnames or [])
                ]
                if missing:
                    raise LookalikeError(f"events file {path} lacks column(s) {missing}; it has {reader.fieldnames}")
                for n, r in enumerate(reader, 2):
                    yield n, {k: (r.get(k) or None) for k in FILE_FIELDS}
        except UnicodeDecodeError as e:
            raise LookalikeError(f"events file {path} is not UTF-8 text: {e}") from None


class SqliteEventLog(EventLog):
    """Beside the embedded store: one SQLite file in WAL mode, `synchronous=FULL` (a commit is on disk before the
    batch is acknowledged). One connection per log, used under a lock; `BEGIN IMMEDIATE` with a busy timeout lets
    another process (`lookalike events import`) write the same file."""

    placeholder = "?"

    def __init__(self, store: VectorStore, path: Path):
        super().__init__(store)
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._lock = threading.Lock()
            with self._tx() as conn:
                for q in self._schema():
                    conn.execute(self._sql(q))
                self._backfill_sales(conn)
        except sqlite3.Error as e:
            raise LookalikeError(f"cannot open the event log {self.path}: {e}") from None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self) -> Any:
        return _Locked(self._conn, self._lock)

    def close(self) -> None:
        self._conn.close()


class _Locked:
    """A shared SQLite connection's `execute`, under its lock, the rows fetched at once."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock):
        self.conn, self.lock = conn, lock

    def execute(self, q: str, params: tuple = ()) -> Any:
        with self.lock:
            return _Rows(self.conn.execute(q, params).fetchall())


class _Rows:
    def __init__(self, rows: list):
        self.rows = rows

    def fetchall(self) -> list:
        return self.rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


class PgEventLog(EventLog):
    """In the pgvector database, through the store's per-thread connections: tables `<table>_events`,
    `<table>_served`, `<table>_kpi` and `<table>_shown` beside the store's `<table>`. Each transaction is the
    database's, so several API workers write one log and read one set of counters."""

    day_sql = "CAST(floor(ts / 86400) AS BIGINT)"

    def __init__(self, store: VectorStore, table: str):
        super().__init__(store, prefix=table + "_")
        import psycopg

        try:
            with self._tx() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('lookalike-events-schema'))")
                for q in self._schema():
                    conn.execute(self._sql(q))
                self._backfill_sales(conn)
        except psycopg.Error as e:
            raise LookalikeError(f"cannot set up the event tables of {table}: {' '.join(str(e).split())}") from None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        conn = self.store._conn()  # type: ignore[attr-defined]  # PgVectorStore's per-thread connection
        with conn.transaction():
            yield conn

    def _read(self) -> Any:
        return self.store._conn()  # type: ignore[attr-defined]


def open_events(store: VectorStore) -> EventLog:
    """The event log beside a store: SQLite next to an embedded store, tables in a pgvector store's database."""
    from lookalike.retrieval.stores.embedded import EmbeddedStore
    from lookalike.retrieval.stores.pgvector import PgVectorStore

    if isinstance(store, EmbeddedStore):
        return SqliteEventLog(store, store.path / SQLITE_FILE)
    if isinstance(store, PgVectorStore):
        return PgEventLog(store, store.table)
    raise LookalikeError(f"no event log for a {type(store).__name__}")
