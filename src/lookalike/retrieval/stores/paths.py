"""How an approximate search with a filter runs: rank the filter's rows exactly, or walk the HNSW index.

Ranking the rows a filter passes costs in proportion to those rows; a filtered index walk costs in proportion to
the work it does to find k of them, which grows as the filter gets more selective (pgvector: the tuples its
iterative scan must hand up, ~k / selectivity; FAISS: the beam, widened by 1 / selectivity). Each backend
measures both paths on `benchmarks/scale.py`'s selectivity sweep, fits one line to each and keeps the two lines
here; a search takes whichever its line says is cheaper, so the switch sits where the measured costs cross,
wherever that is for the store's size. The exact path stays exact; the sweep prints the index path's recall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXACT, INDEX = "exact", "index"
INDEX_THEN_EXACT = "index, then exact"  # the walk found fewer than k rows passing: ranked exactly after all


@dataclass(frozen=True)
class PathCosts:
    """One backend's two filtered paths as fitted lines, in milliseconds per query: exact = `exact_ms` +
    `exact_ms_per_row` × rows passing; index = `index_ms` + `index_ms_per_unit` × the backend's unit of index
    work (pgvector: tuples handed up by the iterative scan; embedded: the FAISS beam width)."""

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

    def choose(self, rows: float, units: float) -> str:
        """The cheaper path; a tie goes to the exact one (same cost, and exact)."""
        return EXACT if self.exact(rows) <= self.index(units) else INDEX
