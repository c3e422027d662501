"""Whole-catalogue statistics: what no store keeps as a count, so it is computed over every stored row.

The centrality of each established product (the best-seller proxy of top10_to_new), the embedding
health of the catalogue and the set of new products (catalogue coverage) need every vector or every
row: at a million products that is tens of seconds and gigabytes (benchmarks/scale.py). They are
computed per store version (`store.version()` moves with every write, whichever process wrote):

- `OnDemandStatistics` computes them in the caller's thread when the version has moved (a script or a
  notebook: the caller waits, as it asked for them);
- `BackgroundStatistics` (the service) computes them in a thread of its own that watches the version, so
  no request ever does; a request takes the latest result, which says the version it describes, and
  before the first result there is none (`StatisticsPending`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.evaluation.centrality import centrality_scores
from lookalike.evaluation.evaluator import embedding_health
from lookalike.retrieval.stores import VectorStore

log = logging.getLogger(__name__)
FLAG = "is_new"


class StatisticsPending(LookalikeError):
    """The first whole-catalogue statistics are still being computed (the service answers 503 + Retry-After)."""

    retry_after = 5


@dataclass(frozen=True)
class CatalogueStatistics:
    version: int  # the store version the statistics describe (read before the rows: never newer than them)
    computed_at: float  # time.time() when the computation finished
    seconds: float  # how long it took
    established_ids: list[str]  # id order
    centrality: np.ndarray  # of each established product, in established_ids order
    new_ids: frozenset[str]
    health: dict | None  # embedding_health of every stored vector ({} below two products; None: not asked for)

    def describe(self) -> dict:
        """What a response says about the statistics it used."""
        return {
            "store_version": self.version,
            "computed_at": dt.datetime.fromtimestamp(self.computed_at, dt.UTC).isoformat(timespec="seconds"),
            "compute_s": round(self.seconds, 3),
        }


def compute_statistics(store: VectorStore, health: bool = True) -> CatalogueStatistics:
    """Every row read once: centrality of the established products, the new-id set, embedding health (its
    variance pass holds another copy of the vectors: the on-demand statistics of a script skip it)."""
    version = store.version()  # first: a write landing during the read moves it, and the next refresh sees that
    t = time.perf_counter()
    ids, vectors, metadata = store.items()
    new = np.fromiter((m.get(FLAG) is True for m in metadata), bool, len(metadata))
    old = np.flatnonzero(~new)
    return CatalogueStatistics(
        version=version,
        computed_at=time.time(),
        seconds=time.perf_counter() - t,
        established_ids=[ids[j] for j in old],
        centrality=centrality_scores(vectors[old]) if len(old) else np.zeros(0, np.float32),
        new_ids=frozenset(ids[j] for j in np.flatnonzero(new)),
        health=(embedding_health(vectors) if len(ids) > 1 else {}) if health else None,
    )


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
    computation (the database away) is logged and retried; the last result stays served meanwhile."""

    def __init__(self, store: VectorStore, interval: float = 1.0):
        self.store, self.interval = store, interval
        self._latest: CatalogueStatistics | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
            self._latest = new = compute_statistics(self.store)
        log.debug("catalogue statistics for store version %d computed in %.2f s", new.version, new.seconds)
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
    while not stop.is_set():
        stats = ref()
        if stats is None:
            return
        try:
            stats.refresh()
        except Exception:  # the store unreachable for a while: keep serving the last result, try again
            log.exception("computing the catalogue statistics failed; retrying")
        latest = stats.latest
        wait = max(stats.interval, latest.seconds if latest is not None else 0.0)
        del stats, latest
        stop.wait(wait)
