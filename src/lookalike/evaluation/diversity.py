"""Beyond-accuracy metrics of recommendation lists: intra-list diversity, catalogue coverage, novelty.

Defined as the Microsoft Recommenders evaluation module defines them
(`recommenders.evaluation.python_evaluation`: `diversity` with `item_sim_measure="item_feature_vector"`,
`catalog_coverage`, `novelty`), so figures are comparable with that library:

- diversity (Zhang et al., Auralist, WSDM 2012, eq. 3; intra-list similarity of Ziegler et al. 2005):
  per list, 1 − mean cosine similarity over its distinct unordered item pairs; averaged over lists.
- catalog coverage (Shani & Gunawardana 2010): distinct recommended items / distinct catalogue items.
- novelty (Castells, Vargas & Wang, ECIR 2011, item-choice model): item novelty = −log2(count / total
  count) from historical interactions; the mean over every recommended (list, item) entry. As in the
  reference, an item with no recorded interaction adds 0 but still counts in the denominator.

The library itself is not a dependency (it pulls Jupyter, LightGBM, Cornac …); tests check these
functions against hand-worked examples of its formulas.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from lookalike.vectors import unit


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise (1 − cosine) over the distinct pairs of one list's item vectors, rows = items."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (items × dims), got shape {x.shape}")
    n = len(x)
    if n < 2:
        return 0.0
    x = unit(x)
    iu = np.triu_indices(n, k=1)
    return float(1.0 - (x @ x.T)[iu].mean())


def mean_intra_list_diversity(lists: np.ndarray, vectors: np.ndarray) -> float:
    """`diversity` of the reference: mean over lists of intra_list_diversity. lists: (n_lists, k) row
    indices into `vectors`."""
    x = unit(np.asarray(vectors, dtype=np.float64))
    lists = np.asarray(lists)
    k = lists.shape[1]
    if k < 2:
        return 0.0
    v = x[lists]  # (n, k, d)
    sims = np.einsum("nid,njd->nij", v, v)
    iu = np.triu_indices(k, k=1)
    return float((1.0 - sims[:, iu[0], iu[1]].mean(axis=1)).mean())


def catalogue_coverage(lists: Iterable[Iterable[str]], catalogue_ids: Iterable[str]) -> float:
    """Share of the catalogue that appears in at least one list (the reference's `catalog_coverage`)."""
    catalogue = set(catalogue_ids)
    if not catalogue:
        raise ValueError("catalogue_coverage needs a non-empty catalogue")
    recommended = {i for lst in lists for i in lst}
    return len(recommended) / len(catalogue)


def novelty(lists: Iterable[Iterable[str]], popularity: Mapping[str, float]) -> float:
    """Mean −log2(popularity share) of the recommended entries. popularity: item → historical count."""
    total = float(sum(popularity.values()))
    if total <= 0:
        raise ValueError("novelty needs a popularity mapping with a positive total count")
    scores = [(-np.log2(popularity[i] / total) if popularity.get(i, 0) > 0 else 0.0) for lst in lists for i in lst]
    return float(np.mean(scores)) if scores else 0.0
