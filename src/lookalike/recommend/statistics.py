"""Whole-catalogue statistics: what no store keeps as a count, so it is computed over every stored row.

The centrality of each established product (the best-seller proxy of top10_to_new; with purchase events, its
Spearman correlation with the units sold, `ProxyCheck`), the embedding
health of the catalogue and the set of new products (catalogue coverage) need every vector or every
row: at a million products that is tens of seconds and gigabytes (benchmarks/scale.py). They are
computed per store version (`store.version()` moves with every write, whichever process wrote):

- `OnDemandStatistics` computes them in the caller's thread when the version has moved (a script or a
  notebook: the caller waits, as it asked for them);
- `BackgroundStatistics` (the service) computes them in a thread of its own that watches the version, so
  no request ever does; a request takes the latest result, which says the version it describes, and
  before the first result there is none (`StatisticsPending`). From `subprocess_from` products on, the
  thread has a child process compute them: reading every row holds the interpreter lock for seconds
  at a time (one `json.loads` of all metadata, psycopg building a million rows), which would stall
  the requests of the serving process, and the child's gigabytes go back when it exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.evaluation.centrality import centrality_scores
from lookalike.evaluation.evaluator import embedding_health
from lookalike.retrieval.stores import VectorStore, open_store

log = logging.getLogger(__name__)
FLAG = "is_new"
CENTRAL = 2000  # most central established products the service keeps (top10_to_new lists at most 200)


class StatisticsPending(LookalikeError):
    """The first whole-catalogue statistics are still being computed (the service answers 503 + Retry-After)."""

    retry_after = 5


@dataclass(frozen=True)
class CatalogueStatistics:
    version: int  # the store version the statistics describe (read before the rows: never newer than them)
    computed_at: float  # time.time() when the computation finished
    seconds: float  # how long it took
    n_established: int
    central_ids: list[str]  # the most central established products, most central first, ties by id
    central_scores: np.ndarray  # their centrality
    new_ids: np.ndarray  # the new products' ids, sorted (one buffer: cheap to hand over from a child process)
    health: dict | None  # embedding_health of every stored vector ({} below two products; None: not asked for)
    established_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, str))  # sorted
    established_centrality: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # aligned with them

    def centrality_of(self, ids: list[str]) -> np.ndarray:
        """The centrality of each of `ids` (NaN for one that is not an established product of this version)."""
        out = np.full(len(ids), np.nan, np.float32)
        if not ids or not len(self.established_ids):
            return out
        q = np.array(ids, dtype=str)
        at = np.searchsorted(self.established_ids, q).clip(0, len(self.established_ids) - 1)
        hit = self.established_ids[at] == q
        out[hit] = self.established_centrality[at[hit]]
        return out

    def count_new(self, ids: list[str]) -> int:
        """How many of `ids` (distinct) are new products."""
        if not ids or not len(self.new_ids):
            return 0
        q = np.array(ids, dtype=str)
        at = np.searchsorted(self.new_ids, q).clip(0, len(self.new_ids) - 1)
        return int((self.new_ids[at] == q).sum())

    def describe(self) -> dict:
        """What a response says about the statistics it used."""
        return {
            "store_version": self.version,
            "computed_at": dt.datetime.fromtimestamp(self.computed_at, dt.UTC).isoformat(timespec="seconds"),
            "compute_s": round(self.seconds, 3),
        }


def compute_statistics(store: VectorStore, health: bool = True, central: int | None = None) -> CatalogueStatistics:
    """Every row read once: centrality of the established products (the `central` most central kept; None:
    all), the new-id set, embedding health (its variance pass holds another copy of the vectors: the
    on-demand statistics of a script skip it)."""
    version = store.version()  # first: a write landing during the read moves it, and the next refresh sees that
    t = time.perf_counter()
    ids, vectors, metadata = store.items()
    new = np.fromiter((m.get(FLAG) is True for m in metadata), bool, len(metadata))
    old = np.flatnonzero(~new)
    scores = centrality_scores(vectors[old]) if len(old) else np.zeros(0, np.float32)
    order = np.lexsort((old, -scores))[:central]  # ties by id (rows are in id order)
    old_ids = np.array([ids[j] for j in old], dtype=str)
    by_id = np.argsort(old_ids, kind="stable")
    return CatalogueStatistics(
        version=version,
        computed_at=time.time(),
        seconds=time.perf_counter() - t,
        n_established=len(old),
        central_ids=[ids[old[j]] for j in order],
        central_scores=np.asarray(scores[order], np.float32),
        new_ids=np.array(sorted(ids[j] for j in np.flatnonzero(new)), dtype=str),
        health=(embedding_health(vectors) if len(ids) > 1 else {}) if health else None,
        established_ids=old_ids[by_id],
        established_centrality=np.asarray(scores, np.float32)[by_id],
    )


@dataclass(frozen=True)
class ProxyCheck:
    """The best-seller-proxy hypothesis on the retailer's own data: Spearman's rank correlation between the
    centrality of the established products that sold in the window and their units (scipy.stats.spearmanr)."""

    spearman: float | None  # None below 3 products, or when either side is constant
    p_value: float | None
    n_products: int  # established products of the statistics' version with units in the window
    units: int  # their units
    window_days: int
    store_version: int
    computed_at: float

    def describe(self) -> dict:
        return {
            "spearman": None if self.spearman is None else round(self.spearman, 4),
            "p_value": None if self.p_value is None else float(f"{self.p_value:.4g}"),
            "n_products": self.n_products,
            "units": self.units,
            "window_days": self.window_days,
            "store_version": self.store_version,
            "computed_at": dt.datetime.fromtimestamp(self.computed_at, dt.UTC).isoformat(timespec="seconds"),
        }


def proxy_check(stats: CatalogueStatistics, units: dict[str, int], window_days: int) -> ProxyCheck:
    """Spearman between centrality and units over the products that have both (off the request path)."""
    from scipy.stats import spearmanr

    ids = sorted(units)
    central = stats.centrality_of(ids)
    keep = ~np.isnan(central)
    sold = np.array([units[i] for i in ids], np.float64)[keep]
    central = central[keep].astype(np.float64)
    rho = p = None
    if len(sold) >= 3 and np.ptp(sold) > 0 and np.ptp(central) > 0:
        res = spearmanr(central, sold)
        rho, p = float(res.statistic), float(res.pvalue)
    return ProxyCheck(rho, p, int(keep.sum()), int(sold.sum()), window_days, stats.version, time.time())


def _child(url: str, central: int, conn) -> None:
    """A child process's computation, on its own handle of the store, at a lower CPU priority than the
    requests the serving process answers meanwhile."""
    try:
        os.nice(10)
        store = open_store(url)
        try:
            conn.send(("ok", compute_statistics(store, central=central)))
        finally:
            store.release()
    except BaseException as e:  # the parent logs it; a child must not die silently
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def compute_in_subprocess(url: str, central: int = CENTRAL) -> CatalogueStatistics:
    """`compute_statistics` in a fresh (spawned) process on the store at `url`."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(url, central, send), name="catalogue-stats", daemon=True)
    proc.start()
    send.close()
    try:
        status, payload = recv.recv()
    except EOFError:
        proc.join()
        raise LookalikeError(f"the statistics process ended with exit code {proc.exitcode}") from None
    finally:
        recv.close()
        proc.join()
    if status != "ok":
        raise LookalikeError(f"the statistics process failed: {payload}")
    return payload


class OnDemandStatistics:
    """Computed in the caller's thread whenever the store's version has moved since the last computation
    (without embedding health, which only the service reports)."""

    def __init__(self, store: VectorStore):
        self.store = store
        self._latest: CatalogueStatistics | None = None
        self._lock = threading.Lock()

    @property
    def latest(self) -> CatalogueStatistics | None:
        return self._latest

    def get(self) -> CatalogueStatistics:
        with self._lock:
            if self._latest is None or self._latest.version != self.store.version():
                self._latest = compute_statistics(self.store, health=False)
            return self._latest


class BackgroundStatistics:
    """Recomputed by a thread of its own when the store's version moves; `get()` never computes.

    The thread checks the version every `interval` seconds and, after a computation, waits at least as
    long as that computation took, so a stream of writes keeps it busy at most half the time. A failed
    computation (the database away) is logged and retried, less often each time (up to a minute apart); the
    last result stays served meanwhile. With
    the store's `url`, catalogues of `subprocess_from` products or more are computed in a child process."""

    def __init__(
        self, store: VectorStore, interval: float = 1.0, url: str | None = None, subprocess_from: int = 10_000
    ):
        self.store, self.interval, self.url, self.subprocess_from = store, interval, url, subprocess_from
        self._latest: CatalogueStatistics | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sales: tuple[Callable[[], int], Callable[[int], dict[str, int]], int] | None = None
        self._sales_key: tuple | None = None
        self.proxy: ProxyCheck | None = None  # the latest best-seller-proxy check (None before purchases)

    def watch_sales(
        self, purchases: Callable[[], int], units_sold: Callable[[int], dict[str, int]], window_days: int
    ) -> None:
        """Also keep the best-seller-proxy check current: recomputed when the statistics' version, the count of
        purchases (`purchases()`, a counter read) or the day moves; `units_sold(window_days)` reads the units."""
        self._sales = (purchases, units_sold, window_days)

    def refresh_proxy(self) -> bool:
        """Recompute the proxy check if its inputs moved; whether it did (the thread calls it; so may a test)."""
        s = self._latest
        if self._sales is None or s is None:
            return False
        purchases, units_sold, window = self._sales
        n = purchases()
        key = (s.version, n, int(time.time() // 86_400))
        if key == self._sales_key:
            return False
        self.proxy = proxy_check(s, units_sold(window), window) if n else None
        self._sales_key = key
        return True

    @property
    def latest(self) -> CatalogueStatistics | None:
        return self._latest

    def get(self) -> CatalogueStatistics:
        s = self._latest
        if s is None:
            raise StatisticsPending(
                "the catalogue statistics (centrality, embedding health) are still being computed after start-up; "
                "retry in a few seconds"
            )
        return s

    def refresh(self) -> bool:
        """Recompute if the store's version has moved; whether it did (the thread calls it; so may a test)."""
        with self._lock:
            s = self._latest
            if s is not None and s.version == self.store.version():
                return False
            if self.url is not None and len(self.store) >= self.subprocess_from:
                new = compute_in_subprocess(self.url)
            else:
                new = compute_statistics(self.store, central=CENTRAL)
            self._latest = new
        log.debug("catalogue statistics of store version %d computed in %.2f s", new.version, new.seconds)
        return True

    def start(self) -> None:
        if self._thread is None:
            ref = weakref.ref(self)  # the thread must not keep an abandoned service alive
            self._thread = threading.Thread(target=_watch, args=(ref, self._stop), name="catalogue-stats", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a computation under way finishes first, up to `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _watch(ref: weakref.ref, stop: threading.Event) -> None:
    failures = 0
    while not stop.is_set():
        stats = ref()
        if stats is None:
            return
        try:
            stats.refresh()
            stats.refresh_proxy()
            failures = 0
        except Exception:  # the store unreachable for a while: keep serving the last result, try again later
            failures += 1
            log.exception("computing the catalogue statistics failed (%d time(s) in a row); retrying", failures)
        latest = stats.latest
        wait = max(stats.interval, latest.seconds if latest is not None else 0.0)
        if failures:
            wait = min(60.0, stats.interval * 2**failures)
        del stats, latest
        stop.wait(wait)
