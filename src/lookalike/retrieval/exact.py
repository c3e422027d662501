"""Exact top-k by inner product (cosine on unit vectors), chunked so a 1M-product gallery fits in memory.

Like FAISS's contrib/exhaustive_search, this is the ground truth anything approximate is checked
against; evaluation always uses it (through retrieval/ranking.py), so metrics never depend on an index's
recall. Each chunk is cut by the one top-k (retrieval/topk.py): score descending, then gallery row ascending.
"""

from __future__ import annotations

import numpy as np

from lookalike.retrieval.topk import topk

MAX_SCORES = 2**26  # scores held at once per chunk (256 MB of float32)


def exact_topk(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    chunk: int = 1024,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (n_queries, k), best first, ties by gallery row. `exclude[i]` is a gallery
    index to leave out of query i's ranking (the query's own image in image → image search), or -1. `bias`
    (n_gallery,) is added to every query's scores (e.g. a hubness penalty)."""
    k = min(k, len(gallery) - (1 if exclude is not None else 0))
    # A chunk's score matrix and argpartition's index matrix stay near 0.75 GB whatever the gallery size
    # (1,024 queries × 40k here; 64 queries × 1M), so evaluation over a million products fits in memory.
    chunk = max(1, min(chunk, MAX_SCORES // max(len(gallery), 1)))
    idx_out = np.empty((len(queries), k), np.int64)
    sc_out = np.empty((len(queries), k), np.float32)
    g = np.ascontiguousarray(gallery, np.float32)
    b = None if bias is None else np.asarray(bias, np.float32)[None, :]
    for s in range(0, len(queries), chunk):
        sims = np.ascontiguousarray(queries[s : s + chunk], np.float32) @ g.T
        if b is not None:
            sims += b
        if exclude is not None:
            rows = np.arange(len(sims))
            ex = exclude[s : s + chunk]
            valid = ex >= 0
            sims[rows[valid], ex[valid]] = -np.inf
        idx_out[s : s + chunk], sc_out[s : s + chunk] = topk(sims, k)
    return idx_out, sc_out
