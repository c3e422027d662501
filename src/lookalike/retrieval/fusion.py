"""Hybrid search: fuse several retrievers' candidate lists by normalised weighted score sum, or by RRF.

Raw scores are not comparable (cosine in [-1, 1], BM25 unbounded and query-length dependent), so each
retriever's list is normalised per query before weighting (Bruch et al., 2023, "An analysis of fusion
functions for hybrid retrieval"): min-max maps the list to [0, 1]; z-score centres and scales it.
A document missing from one list takes that list's floor (0 after min-max, the list's lowest z-score):
it is at best as good as the worst candidate that retriever returned. RRF (Cormack et al., 2009) uses
ranks only: Σ w / (k + rank). Lists are cut by the one top-k (retrieval/topk.py): score descending, then
document index ascending.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from lookalike.retrieval.topk import topk

Method = Literal["minmax", "zscore", "rrf"]
Run = tuple[np.ndarray, np.ndarray]  # (indices, scores), each (n_queries, depth), best first


def topk_from_scores(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> Run:
    """Top-k of a dense (n, n_docs) score matrix, best first, ties by doc index (retrieval/topk.py);
    `exclude[i]` is a doc to leave out of row i, or -1. Rows with fewer than k finite scores end in -1 / −inf."""
    sc = np.array(scores, np.float32, copy=True)
    if exclude is not None:
        rows = np.nonzero(exclude >= 0)[0]
        sc[rows, exclude[rows]] = -np.inf
    return topk(sc, min(k, sc.shape[1] - (1 if exclude is not None else 0)))


def normalise(scores: np.ndarray, method: Literal["minmax", "zscore"]) -> np.ndarray:
    """Per-row normalisation of candidate scores; a row of equal scores maps to all 1 (min-max) / 0 (z)."""
    s = scores.astype(np.float64)
    if method == "minmax":
        lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
        span = hi - lo
        return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1), 1.0)
    if method == "zscore":
        mu, sd = s.mean(axis=1, keepdims=True), s.std(axis=1, keepdims=True)
        return np.where(sd > 0, (s - mu) / np.where(sd > 0, sd, 1), 0.0)
    raise ValueError(f"unknown normalisation {method!r}; use minmax or zscore")


def fuse(
    runs: list[Run],
    weights: list[float],
    n_docs: int,
    k: int,
    method: Method = "minmax",
    rrf_k: int = 60,
    exclude: np.ndarray | None = None,
    chunk: int = 1024,
) -> Run:
    """Fused top-k. Documents in no list are never returned: a query whose lists hold fewer than k documents
    has its list padded with index -1 and score −inf."""
    if len(runs) != len(weights):
        raise ValueError(f"{len(runs)} runs but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError(f"fusion weights must be ≥ 0, got {weights}")
    n = len(runs[0][0])
    out_idx, out_sc = [], []
    for s in range(0, n, chunk):
        fused = np.zeros((min(chunk, n - s), n_docs), np.float64)
        listed = np.zeros(fused.shape, bool)
        rows = np.arange(len(fused))[:, None]
        for (idx, sc), w in zip(runs, weights):
            idx, sc = idx[s : s + chunk], sc[s : s + chunk]
            if method == "rrf":
                contrib, floor = 1.0 / (rrf_k + np.arange(1, idx.shape[1] + 1))[None, :].repeat(len(idx), 0), 0.0
            else:
                contrib = normalise(sc, method)
                floor = contrib.min(axis=1, keepdims=True) if contrib.size else 0.0
            part = np.zeros(fused.shape, np.float64) + floor
            part[rows, idx] = contrib
            listed[rows, idx] = True
            fused += w * part
        fused[~listed] = -np.inf
        i, v = topk_from_scores(fused, k, None if exclude is None else exclude[s : s + chunk])
        out_idx.append(i)
        out_sc.append(v)
    return np.concatenate(out_idx), np.concatenate(out_sc)
