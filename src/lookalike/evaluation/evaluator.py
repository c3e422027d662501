"""Retrieval evaluation over the whole gallery of a split: every product is a query and a gallery item.

An evaluator is a callable returning a dict of named metrics (as in sentence-transformers). It ranks
through the one ranking function (retrieval/ranking.py: exact search over the whole gallery, ties by
product id, the hubness offsets for corrected tasks), as `lookalike search` and the service do; it
computes metrics under each relevance definition (instance = the product's own photo; attribute =
photos whose compared fields all equal the query's), for all queries, anchor (most central) queries
and per category, and can export TREC runs and qrels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.catalogue.schema import Product
from lookalike.evaluation.metrics import aggregate, per_query_metrics
from lookalike.evaluation.trec import write_qrels, write_run
from lookalike.retrieval.ranking import Gallery, rank, stacked

SELF_EXCLUDED = {"image_to_image"}  # the query photo itself is not a result of image → image search


def relevance_keys(products: list[Product], fields: list[str] | None) -> np.ndarray:
    """Equal keys = mutually relevant. `None` means instance relevance (each product its own key)."""
    if fields is None:
        return np.arange(len(products))
    codes: dict[tuple, int] = {}
    return np.array([codes.setdefault(tuple(p.value(f) for f in fields), len(codes)) for p in products])


def similarity_stats(queries: np.ndarray, images: np.ndarray, keys: np.ndarray, seed: int = 0) -> dict:
    """Cosine of each query to its own image (positive) vs to a random product with other attributes."""
    rng = np.random.default_rng(seed)
    pos = np.einsum("ij,ij->i", queries, images)
    j = rng.integers(0, len(images), size=len(images))
    neg_ok = keys[j] != keys
    neg = np.einsum("ij,ij->i", queries[neg_ok], images[j[neg_ok]])
    bins = np.linspace(-1, 1, 41)
    return {
        "positive_mean": float(pos.mean()),
        "positive_std": float(pos.std()),
        "negative_mean": float(neg.mean()) if len(neg) else float("nan"),
        "negative_std": float(neg.std()) if len(neg) else float("nan"),
        "gap": float(pos.mean() - (neg.mean() if len(neg) else 0.0)),
        "histogram_bins": bins.tolist(),
        "positive_histogram": np.histogram(pos, bins)[0].tolist(),
        "negative_histogram": np.histogram(neg, bins)[0].tolist(),
    }


def embedding_health(vectors: np.ndarray, seed: int = 0) -> dict:
    """Unit norms, spread and collapse checks (a collapsed tower maps everything to one direction)."""
    norms = np.linalg.norm(vectors, axis=1)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(vectors), size=(2, min(20000, len(vectors) ** 2)))
    off = a != b
    cos = np.einsum("ij,ij->i", vectors[a[off]], vectors[b[off]])
    return {
        "norm_mean": float(norms.mean()),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "unit_norm_ok": bool(np.allclose(norms, 1.0, atol=1e-3)),
        "variance_per_dim_mean": float(vectors.var(axis=0).mean()),
        "total_variance": float(vectors.var(axis=0).sum()),
        "mean_pairwise_cosine": float(cos.mean()) if off.any() else float("nan"),
        "collapsed": bool(vectors.var(axis=0).sum() < 1e-3),
    }


class RetrievalEvaluator:
    def __init__(
        self,
        products: list[Product],
        definitions: dict[str, list[str] | None],
        ks: list[int],
        depth: int = 100,
        anchors: np.ndarray | None = None,
        category_field: str | None = None,
    ):
        self.products = products
        self.ids = [p.id for p in products]
        self.definitions = definitions
        self.keys = {name: relevance_keys(products, fields) for name, fields in definitions.items()}
        self.ks = ks
        self.depth = depth
        self.anchors = anchors
        self.categories = np.array([p.value(category_field) for p in products]) if category_field else None

    def _groups(self) -> dict[str, np.ndarray | None]:
        groups: dict[str, np.ndarray | None] = {"all": None}
        if self.anchors is not None:
            groups["anchor"] = self.anchors
        return groups

    def rank(
        self, task: str, queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores), each (n_queries, depth): every query's exact top-`depth` over the whole gallery."""
        exclude = np.arange(len(queries)) if task in SELF_EXCLUDED else None
        return stacked(
            rank(queries, Gallery(gallery, self.ids, bias), self.depth, corrected=bias is not None, exclude=exclude)
        )

    def __call__(
        self,
        queries: dict[str, np.ndarray],
        gallery: np.ndarray,
        out_dir: Path | None = None,
        per_category: bool = True,
        biases: dict[str, np.ndarray] | None = None,
    ) -> dict:
        """`biases[task]`: a per-gallery-image score offset that task ranks with (e.g. hubness correction)."""
        results: dict = {}
        written: set[str] = set()
        for task, q in queries.items():
            top_idx, top_scores = self.rank(task, q, gallery, (biases or {}).get(task))
            self_excluded = task in SELF_EXCLUDED
            task_res: dict = {
                "n_queries": len(q),
                "gallery_size": len(gallery),
                "run_depth": top_idx.shape[1],
                "self_excluded": self_excluded,
            }
            for name, keys in self.keys.items():
                if self_excluded and self.definitions[name] is None:
                    continue  # instance relevance is trivial when the query image is in the gallery
                rel = keys[top_idx] == keys[:, None]
                counts = np.bincount(keys, minlength=keys.max() + 1)[keys] - (1 if self_excluded else 0)
                pq = per_query_metrics(rel, counts, self.ks)
                block: dict = {g: aggregate(pq, m) for g, m in self._groups().items()}
                if per_category and self.categories is not None:
                    block["per_category"] = {
                        c: aggregate(pq, self.categories == c) for c in sorted(set(self.categories.tolist()))
                    }
                block["queries_without_relevant"] = int((counts == 0).sum())
                task_res[name] = block
                if out_dir is not None:
                    # json/text queries share qrels; image → image has its own (the query photo excluded).
                    qrels = f"{task}.{name}.qrels" if self_excluded else f"{name}.qrels"
                    if qrels not in written:
                        write_qrels(
                            Path(out_dir) / qrels,
                            self.ids,
                            self.ids,
                            keys,
                            keys,
                            exclude=np.arange(len(keys)) if self_excluded else None,
                        )
                        written.add(qrels)
                    block["qrels_file"] = qrels
            if not self_excluded:
                strict = self.keys.get("attribute", next(iter(self.keys.values())))
                task_res["similarity"] = similarity_stats(q, gallery, strict)
            task_res["query_health"] = embedding_health(q)
            if out_dir is not None:
                write_run(Path(out_dir) / f"{task}.run", self.ids, self.ids, top_idx, top_scores, f"lookalike-{task}")
                task_res["run_file"] = f"{task}.run"
            results[task] = task_res
        results["gallery_health"] = embedding_health(gallery)
        return results


def get_metric(results: dict, path: str) -> float:
    """'json_to_image/attribute/ndcg@10' → results['json_to_image']['attribute']['all']['ndcg@10']."""
    task, definition, metric = path.split("/")
    return float(results[task][definition]["all"][metric])
