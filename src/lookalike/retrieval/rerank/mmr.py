"""Maximal Marginal Relevance (Carbonell & Goldstein, 1998) over a candidate list.

Greedy: each step picks the candidate maximising λ·relevance − (1−λ)·max similarity to those already
picked. λ = 1 is the plain top-K; lower λ trades relevance for a less redundant list.
"""

from __future__ import annotations

import numpy as np


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float = 0.7) -> np.ndarray:
    """Indices into the candidates, in MMR order. relevance: (n,) query scores; vectors: (n, d) unit rows."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"MMR lambda must be in [0, 1], got {lam}")
    n = len(relevance)
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    sims = vectors @ vectors.T
    chosen = [int(np.argmax(relevance))]
    max_sim = sims[chosen[0]].copy()
    available = np.ones(n, bool)
    available[chosen[0]] = False
    while len(chosen) < k:
        score = lam * relevance - (1 - lam) * max_sim
        score[~available] = -np.inf
        j = int(np.argmax(score))
        chosen.append(j)
        available[j] = False
        np.maximum(max_sim, sims[j], out=max_sim)
    return np.asarray(chosen, np.int64)
