"""The one top-k: every ranked list in lookalike is cut here, so every list breaks ties the same way.

The rule: score descending, then column (gallery row) ascending. Every item tied with the k-th score is
considered, so the cut at k is exact too: among items tied at the cut the lowest rows are kept, never
whichever ones a partial sort happened to leave in front. Excluded items (score −inf) are never returned.
The embedded store keeps its rows sorted by id and an in-memory `Gallery` (retrieval/ranking.py) orders
its rows by id, so "row ascending" is "id ascending" there, as pgvector's `ORDER BY score DESC, id` is.

Two forms: `topk` cuts each row of a score matrix (rows with fewer than k finite scores are padded with
index −1 and score −inf, the FAISS convention); `topk_row` cuts one row and drops the −inf entries.
`exact_topk` (retrieval/exact.py) computes the scores a chunk of queries at a time and cuts each chunk here.
"""

from __future__ import annotations

import numpy as np


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (n, min(k, m)), best first, for an (n, m) score matrix; see the module
    docstring for the tie rule and the −1 / −inf padding. Scores must not be NaN."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-D matrix (queries × items), got shape {s.shape}")
    n, m = s.shape
    k = max(0, min(int(k), m))
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), s.dtype)
    if k < m:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(m, dtype=np.int64), (n, m)).copy()
    psc = np.take_along_axis(s, part, axis=1)
    if k < m:
        # The partition holds the k best as a multiset; with more items tied at the k-th score than it kept,
        # which of them it kept is arbitrary. Those rows are cut again over every tied item.
        kth = psc.min(axis=1)
        tied = np.flatnonzero(((s >= kth[:, None]).sum(axis=1) > k) & np.isfinite(kth))
        for r in tied:
            cand = np.flatnonzero(s[r] >= kth[r])
            keep = cand[np.lexsort((cand, -s[r, cand]))[:k]]
            part[r], psc[r] = keep, s[r, keep]
    order = np.lexsort((part, -psc), axis=1)
    idx, sc = np.take_along_axis(part, order, axis=1), np.take_along_axis(psc, order, axis=1)
    idx[np.isneginf(sc)] = -1
    return idx, sc


def topk_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of one score row's top-k, best first, ties by index, −inf (excluded) dropped."""
    idx, sc = topk(np.asarray(scores).reshape(1, -1), k)
    keep = idx[0] >= 0
    return idx[0][keep], sc[0][keep]
