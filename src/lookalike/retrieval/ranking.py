"""One path from a query vector to a ranked list: `lookalike search`, evaluation, the main job's sample grids,
the public API and the service all rank through `rank`, so one query on one catalogue gives the same list
and the same scores everywhere.

The score of an item is its cosine to the query, plus, for *corrected* queries (attribute JSON and text), the
item's hubness offset (−weight × its hub penalty, retrieval/hubness.py); image queries rank by plain cosine.
Lists are cut by the one top-k (retrieval/topk.py): score descending, then id ascending. Diversity re-ranks
the exact top min(max(5k, 50), 500) by MMR.

A gallery is either
- a `Gallery`: vectors in memory (a catalogue for `lookalike search`, a split for evaluation). Every item is
  scored (one matrix product a chunk of queries at a time), so every list is exact;
- a `StoreGallery`: a `VectorStore` (the service). The store returns the cosine top-D with its filters and
  exclusions applied, and `rank` re-scores those D with their offsets. For corrected queries the cut is
  *certified*. The `TOP_EXACT` items with the largest offsets are held in memory (`Bound`); every other item's
  offset is at most `Bound.rest`, the largest offset among the others. So an item outside the cosine top-D
  scores at most the larger of (D-th cosine + rest) and the best exactly scored held item outside the top-D
  (filters and exclusions only lower the true maximum, so the bound ignores them); when the k-th corrected
  score beats that, the re-scored top-k is provably the exact one. Otherwise D grows ×4 and the store is
  asked again, up to the whole store. The bound is computed per store version off the request path
  (`OffsetBound`); until it is known, and under approximate (HNSW) search, lists are re-scored at the first
  depth only and reported uncertified. Each list reports whether it was certified and the depth it used.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.retrieval.exact import exact_topk
from lookalike.retrieval.rerank.mmr import mmr
from lookalike.retrieval.stores.base import Filters, VectorStore
from lookalike.retrieval.topk import topk_row
from lookalike.vectors import unit

if TYPE_CHECKING:
    from lookalike.retrieval.rerank.listwise import ListwiseReranker

logger = logging.getLogger(__name__)

Offsets = Callable[[np.ndarray], np.ndarray | None]  # item vectors → their score offsets (None: no correction)

# The first re-scoring depth of a corrected store query, and how much each further round deepens.
# `python benchmarks/ablations.py --parts depth` prints how often each depth certifies.
FIRST_DEPTH = 200
GROWTH = 4
# How many of the largest-offset items a bound scores exactly. On all 39,653 fashion-products (5,953 test JSON
# queries, top-10) the first depth certified 27% of the lists with the largest offset alone as the bound and
# 98% with the 4,096 largest scored exactly (a 4,096 × 512 product per round); see benchmarks/ablations.py.
TOP_EXACT = 4096
# An item outside the candidates is bounded by float32 sums that may round up by an ulp or two, so the k-th
# score must beat the bound by this much to certify.
CERTIFY_MARGIN = 1e-6


@functools.cache
def _threads():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_thread():
    return _threads().limit(limits=1)


def diversity_pool(k: int) -> int:
    """How many of the best items MMR chooses k from."""
    return min(max(5 * k, 50), 500)


@dataclass
class Ranked:
    """One query's list, best first."""

    ids: list[str]
    scores: np.ndarray  # float32: cosine (+ offset for corrected queries)
    rows: np.ndarray | None = None  # in-memory gallery: the items' rows, in the order the gallery was given
    vectors: np.ndarray | None = None  # store: the listed items' vectors
    metadata: list[dict] | None = None  # store: the listed items' metadata
    certified: bool = True  # provably the exact top-k of the score (always, for an in-memory gallery)
    depth: int = 0  # items scored: the whole gallery in memory, the re-scored cosine top-D on a store
    reranker: str | None = None  # the second stage that ordered the list (`Rerank.name`), or None: by score


@dataclass(frozen=True)
class Rerank:
    """The second stage of S2's serving path: the list-wise self-attention reranker
    (retrieval/rerank/listwise.py) reorders each list's first `depth` candidates (the store's ANN top-100 under
    `--search approximate`) and the top-k of its order is the list. Scores stay the first stage's, so a reranked
    list's scores need not descend."""

    model: ListwiseReranker
    depth: int = 100
    name: str = "listwise"

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 2:
            raise LookalikeError(f"the reranker's candidate depth must be an integer ≥ 2, got {self.depth!r}")


def stacked(lists: list[Ranked]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores), each (n_lists, k), of in-memory lists of one length (evaluation's run matrices)."""
    rows = [r.rows for r in lists]
    if any(r is None for r in rows) or len({len(r.ids) for r in lists}) > 1:
        raise ValueError("stacked needs in-memory lists of one length")
    return np.stack(rows), np.stack([r.scores for r in lists])  # type: ignore[arg-type]


class Gallery:
    """Unit vectors in memory, with their ids (ties are broken by id) and, for corrected queries, their
    offsets: an array (in the vectors' order), or a function of the vectors computed on the first corrected
    query. The vectors are kept once, in id order; rows given and returned are in the caller's order."""

    def __init__(self, vectors: np.ndarray, ids: list[str] | None = None, offsets: np.ndarray | Offsets | None = None):
        vectors = np.asarray(vectors)
        if ids is not None and len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(vectors))]
        order = np.argsort(np.array(self.ids, dtype=object), kind="stable") if ids is not None else None
        # `_order[j]`: the caller's row of the j-th vector in id order (None: given in id order already).
        self._order = None if order is None or (np.diff(order) > 0).all() else order
        self._sorted = np.ascontiguousarray(vectors if self._order is None else vectors[self._order], np.float32)
        self._offsets: np.ndarray | Offsets | None = (
            offsets if offsets is None or callable(offsets) else self._in_id_order(np.asarray(offsets, np.float32))
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sorted)

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of rows given in the caller's order."""
        return self._sorted[self._to_sorted(np.asarray(rows, np.int64))]

    def _in_id_order(self, x: np.ndarray) -> np.ndarray:
        return x if self._order is None else x[self._order]

    def _sorted_offsets(self) -> np.ndarray | None:
        """The offsets in id order (None when the model has no correction), computed once."""
        with self._lock:
            if callable(self._offsets):
                off = self._offsets(self._sorted)
                self._offsets = None if off is None else np.asarray(off, np.float32)
            return self._offsets

    def _to_sorted(self, rows: np.ndarray) -> np.ndarray:
        if self._order is None:
            return rows
        inverse = np.empty(len(self._order), np.int64)
        inverse[self._order] = np.arange(len(self._order))
        return np.where(rows >= 0, inverse[np.maximum(rows, 0)], -1)

    def _from_sorted(self, rows: np.ndarray) -> np.ndarray:
        return rows if self._order is None else np.where(rows >= 0, self._order[np.maximum(rows, 0)], -1)


@dataclass
class Bound:
    """What certifies a store's lists for one store version: the `TOP_EXACT` items with the largest offsets
    (ids, unit vectors, offsets), scored exactly, and `rest`, the largest offset of every other item."""

    version: int
    rest: float
    ids: list[str]
    vectors: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        self._held = {i: j for j, i in enumerate(self.ids)}

    @property
    def max(self) -> float:
        """The largest offset of any stored item (−inf for none)."""
        return max(self.rest, float(self.offsets.max()) if len(self.offsets) else -np.inf)

    def outside(self, query: np.ndarray, cosine_d: float, candidates: list[str]) -> float:
        """An upper bound on the score of any stored item not among `candidates`, the cosine top-D of `query`
        (`cosine_d`: the D-th cosine)."""
        bound = cosine_d + self.rest
        if len(self.ids):
            with _one_thread():  # memory-bound: under load a multi-threaded product waits on its slowest thread
                scores = self.vectors @ query + self.offsets
            scores[[j for j in map(self._held.get, candidates) if j is not None]] = -np.inf
            bound = max(bound, float(scores.max()))
        return bound


class OffsetBound:
    """The `Bound` for a store's current version, computed off the request path: in a background thread,
    when first asked and again after each version change (a write by any process). Offsets are remembered by
    the `offsets` function (QueryEncoder.hub_bias keeps them by vector), so a refresh after a write computes
    only the new items' offsets; it does read every stored vector."""

    def __init__(self, store: VectorStore, offsets: Offsets, start: bool = True, top: int = TOP_EXACT):
        self.store, self._offsets, self.top = store, offsets, top
        self._known: Bound | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        if start:
            self.get()

    def get(self) -> Bound | None:
        """The bound for the store's current version, or None while it is being computed."""
        version = self.store.version()
        with self._lock:
            if self._known is not None and self._known.version == version:
                return self._known
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._refresh, name="offset-bound", daemon=True)
                self._worker.start()
        return None

    def wait(self, timeout: float | None = None, tries: int = 3) -> Bound | None:
        """Block until the bound for the current version is known (benchmarks, tests, a warm-up); None if it is
        not after `tries` refreshes (each write during one starts another) or `timeout` seconds of one."""
        for _ in range(tries):
            bound = self.get()
            worker = self._worker
            if bound is not None or worker is None:
                return bound
            worker.join(timeout)
            if worker.is_alive():
                return None
        return self.get()

    def _refresh(self) -> None:
        try:
            version = self.store.version()
            ids, vectors, _ = self.store.items()
            offsets = self._offsets(vectors) if len(vectors) else None
            if offsets is None:  # an empty store, or a model without the correction: nothing to bound
                offsets = np.full(len(ids), -np.inf, np.float32)
            order = np.argsort(-np.asarray(offsets, np.float32), kind="stable")
            held, rest = order[: self.top], order[self.top :]
            bound = Bound(
                version,
                float(offsets[rest].max()) if len(rest) else -np.inf,
                [ids[j] for j in held],
                unit(np.ascontiguousarray(vectors[held], np.float32)),
                np.asarray(offsets, np.float32)[held],
            )
            with self._lock:
                self._known = bound
            logger.debug(  # after every write by any process: not for the default log
                f"offset bound for store version {version}: {len(ids)} items, largest offset {bound.max:.4f}, "
                f"beyond the {len(held)} largest {bound.rest:.4f}"
            )
        except Exception:  # a failed refresh leaves lists uncertified, never a request failed
            logger.exception("computing the store's offset bound failed; lists stay uncertified")


@dataclass
class StoreGallery:
    """A vector store as a gallery: `offsets` maps stored vectors to their offsets (corrected queries) and
    `bound` knows the largest of them (made, and started in the background, when not given); `exact=False`
    takes the candidates from the store's HNSW index (then lists are never certified, and no bound is kept)."""

    store: VectorStore
    offsets: Offsets | None = None
    bound: OffsetBound | None = None
    exact: bool = True

    def __post_init__(self) -> None:
        if self.offsets is not None and self.bound is None and self.exact:  # HNSW candidates certify nothing
            self.bound = OffsetBound(self.store, self.offsets)


def rank(
    queries: np.ndarray,
    gallery: Gallery | StoreGallery | VectorStore,
    k: int,
    *,
    corrected: bool = False,
    exclude: np.ndarray | None = None,
    exclude_ids: list[str] | None = None,
    filters: Filters | None = None,
    diversity: float = 0.0,
    rerank: Rerank | None = None,
) -> list[Ranked]:
    """Each query's top-k, best first. `corrected`: add the items' offsets (JSON and text queries).
    `exclude[i]`: a gallery row left out of query i's list, or -1 (in-memory galleries; image → image search
    leaves the query's own photo out). `exclude_ids`: ids left out of every list. `filters`: metadata
    equality / IN filters (stores). `diversity` (0..1) = 1 − MMR λ. `rerank`: the list-wise reranker orders
    the top `rerank.depth` (it is a diversity stage of its own, so it does not combine with `diversity`)."""
    if not 0.0 <= diversity <= 1.0:
        raise LookalikeError(f"diversity must be between 0 and 1, got {diversity}")
    if rerank is not None and diversity > 0:
        raise LookalikeError("diversity (MMR) and the list-wise reranker are two ways to diversify: choose one")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise LookalikeError(f"k must be a positive integer, got {k!r}")
    q = np.asarray(queries, np.float32)
    q = q[None, :] if q.ndim == 1 else q
    pool = k if diversity == 0 else max(k, diversity_pool(k))
    if rerank is not None:
        pool = max(k, rerank.depth)
    if isinstance(gallery, VectorStore):
        gallery = StoreGallery(gallery)
    if isinstance(gallery, Gallery):
        if filters:
            raise LookalikeError("filters need a store; an in-memory gallery has no metadata to filter on")
        lists = _rank_memory(q, gallery, pool, corrected, exclude, exclude_ids)
    else:
        if exclude is not None:
            raise ValueError("a store excludes by id: give exclude_ids")
        lists = _rank_store(q, gallery, pool, corrected, exclude_ids, filters)
    if rerank is not None:
        return [_rerank(r, k, rerank, gallery) for r in lists]
    if diversity == 0:
        return lists
    return [_diversify(r, k, 1.0 - diversity, gallery) for r in lists]


def _rank_memory(
    q: np.ndarray,
    g: Gallery,
    k: int,
    corrected: bool,
    exclude: np.ndarray | None,
    exclude_ids: list[str] | None,
) -> list[Ranked]:
    bias = g._sorted_offsets() if corrected else None
    if exclude_ids:
        gone = set(exclude_ids)
        rows = g._to_sorted(np.array([r for r, i in enumerate(g.ids) if i in gone], np.int64))
        bias = np.zeros(len(g), np.float32) if bias is None else bias.copy()
        bias[rows] = -np.inf
    ex = None if exclude is None else g._to_sorted(np.asarray(exclude, np.int64))
    idx, sc = exact_topk(unit(q), g._sorted, k, exclude=ex, bias=bias)
    rows = g._from_sorted(idx)
    ids = np.array(g.ids, dtype=object)
    out = []
    for r, s in zip(rows, sc):
        keep = r >= 0
        r, s = r[keep], s[keep]
        out.append(Ranked(ids[r].tolist(), s, rows=r, certified=True, depth=len(g)))
    return out


def _rank_store(
    q: np.ndarray,
    g: StoreGallery,
    k: int,
    corrected: bool,
    exclude_ids: list[str] | None,
    filters: Filters | None,
) -> list[Ranked]:
    store = g.store
    offsets = g.offsets if corrected else None
    if offsets is None:  # plain cosine: the store's own exact (or HNSW) top-k
        hits = store.search(q, k, filters, exact=g.exact, exclude_ids=exclude_ids)
        return [_store_list(store, h, None, k, g.exact) for h in hits]
    bound = g.bound.get() if g.bound is not None and g.exact else None
    depth = max(k, FIRST_DEPTH)
    out: list[Ranked | None] = [None] * len(q)
    pending = list(range(len(q)))
    while pending:
        hits = store.search(q[pending], depth, filters, exact=g.exact, exclude_ids=exclude_ids)
        still = []
        for i, h in zip(pending, hits):
            r = _store_list(store, h, offsets, k, False)
            exhausted = len(h) < depth  # every item passing the filters was scored
            kth = float(r.scores[-1]) if len(r.scores) >= k else -np.inf
            cut = np.inf
            if bound is not None and h:
                cut = bound.outside(unit(q[i]), h[-1][1], [c for c, _ in h]) + CERTIFY_MARGIN
            r.certified = g.exact and (exhausted or kth > cut)
            if r.certified or bound is None or not g.exact:
                out[i] = r
            else:
                still.append(i)
        pending = still
        depth *= GROWTH
    return [r for r in out if r is not None]


def _store_list(
    store: VectorStore, hits: list[tuple[str, float]], offsets: Offsets | None, k: int, certified: bool
) -> Ranked:
    """The store's candidates re-scored with their offsets and cut at k (ties by id)."""
    items = store.get_many([i for i, _ in hits])
    found = [(h, it) for h, it in zip(hits, items) if it is not None]  # deleted since the search: gone
    ids = [h[0] for h, _ in found]
    cos = np.array([h[1] for h, _ in found], np.float32)
    vecs = np.stack([it.vector for _, it in found]) if found else np.zeros((0, store.dim), np.float32)
    meta = [it.metadata for _, it in found]
    scores = cos
    if offsets is not None and found:
        off = offsets(vecs)
        scores = cos if off is None else cos + np.asarray(off, np.float32)
    by_id = np.argsort(np.array(ids, dtype=object), kind="stable") if ids else np.zeros(0, np.int64)
    top, sc = topk_row(scores[by_id], k)  # rows in id order: ties by id
    sel = by_id[top]
    return Ranked(
        [ids[j] for j in sel],
        sc.astype(np.float32),
        vectors=vecs[sel],
        metadata=[meta[j] for j in sel],
        certified=certified,
        depth=len(hits),
    )


def _rerank(r: Ranked, k: int, stage: Rerank, gallery: Gallery | StoreGallery) -> Ranked:
    """The reranker's top k of the list (the first stage's top `stage.depth`), in its order."""
    from lookalike.retrieval.rerank.listwise import rerank_list

    vecs = r.vectors if r.vectors is not None else gallery.vectors_at(r.rows)  # type: ignore[union-attr,arg-type]
    with _one_thread():  # a 100 × 100 attention: threads only wait on each other under load
        order = rerank_list(stage.model, vecs, r.scores, k)
    return Ranked(
        [r.ids[j] for j in order],
        r.scores[order],
        rows=None if r.rows is None else r.rows[order],
        vectors=None if r.vectors is None else r.vectors[order],
        metadata=None if r.metadata is None else [r.metadata[j] for j in order],
        certified=False,  # certified is about the score's exact top-k; a reranked list is another order
        depth=r.depth,
        reranker=stage.name,
    )


def _diversify(r: Ranked, k: int, lam: float, gallery: Gallery | StoreGallery) -> Ranked:
    """MMR's choice of k among the list (the exact top pool), in MMR order."""
    vecs = r.vectors if r.vectors is not None else gallery.vectors_at(r.rows)  # type: ignore[union-attr,arg-type]
    order = mmr(r.scores, vecs, k, lam)
    return Ranked(
        [r.ids[j] for j in order],
        r.scores[order],
        rows=None if r.rows is None else r.rows[order],
        vectors=None if r.vectors is None else r.vectors[order],
        metadata=None if r.metadata is None else [r.metadata[j] for j in order],
        certified=r.certified,
        depth=r.depth,
    )
