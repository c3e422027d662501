"""How an approximate search with a filter runs: rank the filter's rows exactly, or walk the HNSW index.

Ranking the rows a filter passes costs in proportion to those rows; a filtered index walk costs in proportion to
the work it does to find k of them, which grows as the filter gets more selective (pgvector: the rows its
iterative scan must hand up, ~k × rows / passing; FAISS: the beam, widened by rows / passing). Each backend
measures both paths on `benchmarks/scale.py`'s selectivity sweep, fits one line to each and keeps the two lines
in its module; a search takes whichever its lines say is cheaper, so the switch sits where the measured costs
cross, wherever that is for the store's size. The exact path stays exact; the sweep prints the walk's recall.

The walk's line assumes a filter independent of the vectors. A filter that passes whole neighbourhoods (a
category, a brand) breaks that: its rows lie away from most queries, the walk hands up far more rows than
k × rows / passing, and may end with fewer than k, when the store ranks that query exactly after all. Each store
counts, per filter, how many of its walks ended so (`ShortWalks`), and prices the walk with that share.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from lookalike.retrieval.stores.base import value_key

EXACT, INDEX = "exact", "index"
INDEX_THEN_EXACT = "index, then exact"  # the walk found fewer than k rows passing: ranked exactly after all


@dataclass(frozen=True)
class PathCosts:
    """One backend's two filtered paths as fitted lines, in milliseconds per query: exact = `exact_ms` +
    `exact_ms_per_row` × rows passing; index = `index_ms` + `index_ms_per_unit` × the backend's unit of index
    work (pgvector: rows handed up by the iterative scan; embedded: the FAISS beam width)."""

    exact_ms: float
    exact_ms_per_row: float
    index_ms: float
    index_ms_per_unit: float

    def exact(self, rows: float) -> float:
        return self.exact_ms + self.exact_ms_per_row * rows

    def index(self, units: float) -> float:
        return self.index_ms + self.index_ms_per_unit * units

    def index_units_for(self, ms: float) -> float:
        """The index work that costs `ms` (the walk's budget when it is given what the exact path would cost)."""
        return max(ms - self.index_ms, 0.0) / self.index_ms_per_unit if self.index_ms_per_unit > 0 else math.inf

    def choose(self, rows: float, units: float, short: float = 0.0, short_ms: float | None = None) -> str:
        """The cheaper path by expected cost; a tie goes to the exact one (same cost, and exact). `short`: the
        share of walks expected to end short of k rows, each having spent `short_ms` (default: a whole walk)
        before the exact ranking."""
        exact = self.exact(rows)
        walk = self.index(units)
        if short:
            walk = (1 - short) * walk + short * ((walk if short_ms is None else short_ms) + exact)
        return EXACT if exact <= walk else INDEX


def filter_key(filters: dict[str, list]) -> str:
    """One string per normalized filter, whatever the order of its fields and values."""
    return json.dumps(sorted((f, sorted(map(value_key, v))) for f, v in filters.items()))


class ShortWalks:
    """Per filter, how many of its walks ended short of k rows passing: the share expected of the next one is
    short / (walks + 1) (a first short walk counts half, not as a certainty). Thread-safe; the most recent
    `size` filters are kept."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def share(self, key: str) -> float:
        with self._lock:
            walks, short = self._counts.get(key, (0, 0))
        return short / (walks + 1)

    def add(self, key: str, walks: int, short: int) -> None:
        with self._lock:
            w, s = self._counts.pop(key, (0, 0))
            self._counts[key] = (w + walks, s + short)
            while len(self._counts) > self.size:
                self._counts.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
