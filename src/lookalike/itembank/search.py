"""Live "find questions like this one": a query text → dense (through a vector store or exact in-process),
BM25, or their fusion → top-k items; plus the latency / stability benchmark of that whole path.

The bank's vectors live in a `lookalike.retrieval.stores` store (pgvector in production, `pgserver://`
for a PostgreSQL started in-process) or, without a store URL, in memory with exact search. The query
is embedded per request (no cache), so measured latency is end to end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.itembank.figures import FigureFusion
from lookalike.itembank.live import (
    DenseSide,
    ItemHit,
    ItemIndex,
    ItemQuery,
    ItemRecord,
    MemoryDense,
    StoreDense,
    rank_items,
)
from lookalike.itembank.loading import ItemBank

Mode = Literal["dense", "bm25", "hybrid", "rrf"]


class ItemSearcher:
    """A bank loaded from a file, ready to search: its vectors embedded (cached), in a store or in memory, and
    its `ItemIndex`; every search goes through `rank_items` (itembank/live.py), as the service's does."""

    def __init__(
        self,
        bank: ItemBank,
        encoder: str = "usem3",
        store_url: str | None = None,
        alpha: float = 0.2,
        normalisation: Literal["minmax", "zscore", "rrf"] = "minmax",
        depth: int = 100,
        cache_dir: str | None = None,
        exact: bool = True,
        progress: bool = False,
        threads: int | None = 1,
        figures: FigureFusion | None = None,
    ):
        from lookalike.encoders.efficientnet import default_cache_dir
        from lookalike.encoders.hf_text import create_item_text_encoder
        from lookalike.retrieval.dense import DenseRetriever

        if not 0 <= alpha <= 1:
            raise LookalikeError(f"alpha must be in [0, 1], got {alpha}")
        self.bank, self.alpha, self.normalisation, self.depth, self.exact = bank, alpha, normalisation, depth, exact
        self.ids = bank.ids
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        # One query at a time: thread hand-offs stall when the cores are busy, so one encoder thread keeps the
        # tail short. benchmarks/itembank.py --checks-only on the shared 2-core box: one thread p50 16 ms,
        # p95 34 ms per dense query; two threads p50 11 ms, p95 97 ms (another run: 21 / 44 vs 62 / 516 ms).
        self.dense = DenseRetriever(create_item_text_encoder(encoder, threads), bank.texts, cache, progress=progress)
        self.figures, self.image_encoder = figures, None
        if figures is not None and figures.method == "multimodal":  # one model reads text and figure together
            from lookalike.itembank.figures import first_figures, multimodal_vectors

            images = first_figures([it.images for it in bank.items])
            self.dense.vectors = multimodal_vectors(self.dense.encoder, bank.texts, images)
        elif figures is not None:  # the question vectors are the fusion of text and figure (itembank/figures.py)
            from lookalike.encoders.registry import create_image_encoder
            from lookalike.itembank.figures import figure_vectors, fuse

            self.image_encoder = create_image_encoder(figures.image_encoder)
            fv, has = figure_vectors([it.images for it in bank.items], self.image_encoder)
            self.dense.vectors = fuse(self.dense.vectors, fv, has, figures)
        records = [ItemRecord(it.id, it.text, it.labels, tuple(str(p) for p in it.images)) for it in bank.items]
        self.store = None
        side: DenseSide
        if store_url:
            self.store = self._fill_store(store_url, records)
            side = StoreDense(self.store, exact)
        else:
            side = MemoryDense(self.ids, self.dense.vectors, [r.labels for r in records])
        self.index = ItemIndex(side)
        self.index.put_many(records)

    def _fill_store(self, url: str, records: list[ItemRecord]):
        """Open the store and make it hold exactly this bank's vectors: stale ids deleted, then one bulk load
        (`VectorStore.load`: whole batches, idempotent, index work deferred to the end)."""
        from lookalike.retrieval.stores import StoreItem, open_store

        store = open_store(url, dim=self.dense.vectors.shape[1])
        stale = set(store.ids()) - set(self.ids)
        if stale:
            store.delete(sorted(stale))
        items = [StoreItem(r.id, v, r.metadata()) for r, v in zip(records, self.dense.vectors)]
        store.load((items[s : s + 1000] for s in range(0, len(items), 1000)), total=len(items))
        return store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def query(
        self, text: str | None = None, item_id: str | None = None, exclude_id: str | None = None, figure=None
    ) -> ItemQuery:
        """A free text, optionally with its figure (a PIL image; embedded now, no cache: latency is end to end),
        or an item of the bank (its stored vector and terms, itself excluded)."""
        if (text is None) == (item_id is None):
            raise LookalikeError("give exactly one query: a text or an item id")
        if item_id is not None:
            return self.index.query_of(item_id)
        if not text or not text.strip():
            raise LookalikeError("empty query text")
        if figure is not None and self.figures is None:
            raise LookalikeError("this bank is searched by text only: give it a figure fusion to search with a figure")
        if self.figures is not None and self.figures.method == "multimodal":
            from lookalike.itembank.figures import multimodal_vectors

            vector = multimodal_vectors(self.dense.encoder, [text], [figure])
            return ItemQuery(vector[0], self.index.tokenizer([text])[0], exclude_id)
        vector = self.dense.embed([text], cache=False)
        if self.figures is not None:
            from lookalike.itembank.figures import fuse

            dim = self.image_encoder.dim  # type: ignore[union-attr]
            fv = np.zeros((1, dim), np.float32) if figure is None else self.image_encoder.encode_images([figure])  # type: ignore[union-attr]
            vector = fuse(vector, fv, np.array([figure is not None]), self.figures)
        return ItemQuery(vector[0], self.index.tokenizer([text])[0], exclude_id)

    def _mode(self, mode: str) -> str:
        return "rrf" if mode == "hybrid" and self.normalisation == "rrf" else mode

    def rank(self, query: ItemQuery, k: int = 10, mode: str = "hybrid", filters: dict | None = None) -> list[ItemHit]:
        norm = "minmax" if self.normalisation == "rrf" else self.normalisation
        return rank_items(self.index, query, k, self._mode(mode), self.alpha, norm, filters, self.depth)

    def search(
        self, text: str, k: int = 10, mode: Mode = "hybrid", exclude_id: str | None = None
    ) -> list[tuple[str, float]]:
        """(id, score) of a text's top-k (`exclude_id` left out)."""
        return [(h.id, h.score) for h in self.rank(self.query(text, exclude_id=exclude_id), k, mode)]


def latency_bench(
    searcher: ItemSearcher, n_queries: int = 1000, k: int = 10, mode: Mode = "hybrid", seed: int = 42, warmup: int = 10
) -> dict:
    """End-to-end latency (embedding included) of `n_queries` bank questions used as queries (each with
    itself excluded), one at a time. Success = no exception and k results. Also checks the store's dense
    top-k against the exact in-process top-k on 100 of the queries: identical (items and scores), and
    recall@k (what an approximate index loses)."""
    rng = np.random.default_rng(seed)
    bank = searcher.bank
    picks = rng.choice(len(bank), n_queries, replace=n_queries > len(bank))
    for i in picks[:warmup]:
        searcher.search(bank.texts[i], k, mode, exclude_id=bank.ids[i])
    lat, ok, agree = [], 0, []
    errors: dict[str, int] = {}
    t_all = time.perf_counter()
    for i in picks:
        t = time.perf_counter()
        try:
            hits = searcher.search(bank.texts[i], k, mode, exclude_id=bank.ids[i])
            good = len(hits) == k and bank.ids[i] not in {h for h, _ in hits}
            ok += good
            if not good:
                errors["short or self-including result"] = errors.get("short or self-including result", 0) + 1
        except Exception as e:  # a stability run counts failures instead of stopping at the first
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t_all
    recall = []
    if searcher.store is not None:
        qv = searcher.dense.vectors[picks[:100]]
        exact_idx, exact_sc = searcher.dense.search(query_vectors=qv, k=k, exclude=picks[:100])
        for n, i in enumerate(picks[:100]):
            got = searcher.store.search(qv[n : n + 1], k, exact=searcher.exact, exclude_ids=[bank.ids[i]])[0]
            want = {bank.ids[j] for j in exact_idx[n]}
            recall.append(len({h for h, _ in got} & want) / k)
            # Equal scores (duplicate questions) are ordered by id in the store, by row here: compare as sets.
            agree.append({h for h, _ in got} == want and np.allclose([s for _, s in got], exact_sc[n], atol=1e-5))
    ms = np.array(lat) * 1000
    return {
        "mode": mode,
        "k": k,
        "queries": n_queries,
        "successes": ok,
        "success_rate": ok / n_queries,
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "throughput_qps": n_queries / wall,
        "store": None if searcher.store is None else type(searcher.store).__name__,
        "exact": searcher.exact,
        "store_matches_exact_top_k": (float(np.mean(agree)) if agree else None),
        "store_recall_at_k_vs_exact": (float(np.mean(recall)) if recall else None),
    }
