"""Ranking metrics from a truncated run, defined exactly as trec_eval / ranx compute them.

All metrics are computed from the top-`depth` list written to the TREC run file (MRR and MAP are
therefore MRR@depth and MAP@depth), with the number of relevant items counted over the WHOLE
gallery, so any figure here can be recomputed from the exported run and qrels.
"""

from __future__ import annotations

import numpy as np


def per_query_metrics(rel: np.ndarray, n_relevant: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """rel: (n, depth) bool, True where the ranked item is relevant; n_relevant: (n,) over the gallery."""
    _n, depth = rel.shape
    relf = rel.astype(np.float64)
    R = n_relevant.astype(np.float64)
    safe_R = np.maximum(R, 1)
    out: dict[str, np.ndarray] = {}
    cum = np.cumsum(relf, axis=1)
    for k in ks:
        hits = cum[:, min(k, depth) - 1]
        out[f"hit@{k}"] = (hits > 0).astype(np.float64)
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = np.where(R > 0, hits / safe_R, 0.0)
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, 0)
    out["mrr"] = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    discount = 1.0 / np.log2(np.arange(2, depth + 2))
    k = min(10, depth)
    dcg = (relf[:, :k] * discount[:k]).sum(axis=1)
    ideal_len = np.minimum(R, k).astype(int)
    idcg = np.cumsum(discount[:k])[np.maximum(ideal_len - 1, 0)] * (ideal_len > 0)
    out["ndcg@10"] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
    precision_at_rank = cum / np.arange(1, depth + 1)
    out["map"] = np.where(R > 0, (precision_at_rank * relf).sum(axis=1) / safe_R, 0.0)
    return out


def graded_ndcg(gains: np.ndarray, ideal: list[np.ndarray], k: int = 10) -> np.ndarray:
    """nDCG@k with graded gains (Järvelin & Kekäläinen's linear gain, as trec_eval and ranx's `ndcg`):
    gains (n, depth) of the ranked items; ideal[i] = every judged gain of query i, any order."""
    g = np.asarray(gains, np.float64)[:, :k]
    discount = 1.0 / np.log2(np.arange(2, g.shape[1] + 2))
    dcg = (g * discount).sum(axis=1)
    full = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = np.zeros(len(ideal))
    for i, x in enumerate(ideal):
        top = np.sort(np.asarray(x, np.float64))[::-1][:k]
        idcg[i] = (top * full[: len(top)]).sum()
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)


def aggregate(per_query: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    sel = slice(None) if mask is None else mask
    n = int(np.asarray(next(iter(per_query.values())))[sel].shape[0])
    out = {name: float(v[sel].mean()) if n else float("nan") for name, v in per_query.items()}
    out["n_queries"] = n
    return out
