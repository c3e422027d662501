"""Best-seller proxy without sales data: how central a product's image is in the catalogue.

Centrality = cosine between a product's L2-normalised image embedding and the global centroid of
all of them; the top fraction (10% by default) is the anchor set that stands in for best sellers.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lookalike.vectors import unit


def centrality_scores(image_vectors: np.ndarray) -> np.ndarray:
    x = unit(image_vectors)
    return x @ unit(x.mean(axis=0))


def anchor_mask(scores: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    n = max(1, round(len(scores) * fraction))
    mask = np.zeros(len(scores), bool)
    mask[np.argsort(-scores, kind="stable")[:n]] = True
    return mask


def centrality_report(
    scores: np.ndarray,
    categories: list[str],
    fraction: float = 0.1,
    sales: np.ndarray | None = None,
    ids: list[str] | None = None,
    top: int = 20,
) -> dict:
    anchors = anchor_mask(scores, fraction)
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        by_cat[c].append(i)
    per_category = {
        c: {
            "n": len(ix),
            "mean": float(scores[ix].mean()),
            "max": float(scores[ix].max()),
            "anchors": int(anchors[ix].sum()),
            "anchor_share": float(anchors[ix].mean()),
        }
        for c, ix in sorted(by_cat.items(), key=lambda kv: -len(kv[1]))
    }
    report = {
        "n": len(scores),
        "anchor_fraction": fraction,
        "n_anchors": int(anchors.sum()),
        "mean_all": float(scores.mean()),
        "mean_anchor": float(scores[anchors].mean()),
        "mean_rest": float(scores[~anchors].mean()) if (~anchors).any() else float("nan"),
        "threshold": float(scores[anchors].min()),
        "check_anchor_mean_exceeds_overall": bool(scores[anchors].mean() > scores.mean()),
        "per_category": per_category,
    }
    if ids is not None:
        order = np.argsort(-scores, kind="stable")[:top]
        report["most_central"] = [
            {"id": ids[i], "category": categories[i], "centrality": float(scores[i])} for i in order
        ]
    if sales is not None:
        known = ~np.isnan(sales)
        if known.sum() >= 3:
            # here: scipy.stats costs seconds to import (benchmarks/core.py), and every API worker imports this module
            from scipy.stats import spearmanr

            rho, p = spearmanr(scores[known], sales[known])
            report["sales"] = {"n": int(known.sum()), "spearman_rho": float(rho), "p_value": float(p)}
    return report
