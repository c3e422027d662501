"""The two recommenders on one store, and plain search.

- customer_input: a photo or a clicked product → the top-K most similar *new* products.
- top10_to_new: best sellers (top fraction by units sold when sales are given; otherwise the most
  central established products, the centrality proxy) → for each its top-K new products, a merged
  ranking, and trend figures (category / colour mix of the matches against the new collection, and
  the similarity distribution).
Every list can be reranked by MMR for diversity; responses report their intra-list diversity.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.evaluation.centrality import centrality_scores
from lookalike.evaluation.diversity import intra_list_diversity
from lookalike.retrieval import ranking
from lookalike.retrieval.ranking import Offsets, StoreGallery
from lookalike.retrieval.stores import VectorStore

NEW = {"is_new": True}


@dataclass
class Snapshot:
    """Whole-catalogue view for statistics (centrality, mixes, coverage), refreshed after writes."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[dict]

    @property
    def new_mask(self) -> np.ndarray:
        return np.array([bool(m.get("is_new")) for m in self.metadata], bool)


def mix(values: list, base: Counter | None = None, top: int = 12) -> list[dict]:
    """Counts and shares of values, with each one's share in `base` (e.g. the new collection) and lift."""
    c = Counter(values)
    n, nb = sum(c.values()) or 1, sum(base.values()) if base else 0
    out = []
    for v, k in c.most_common(top):
        row = {"value": v, "count": k, "share": round(k / n, 4)}
        if base:
            b = base.get(v, 0) / max(nb, 1)
            row.update({"collection_share": round(b, 4), "lift": round((k / n) / b, 3) if b else None})
        out.append(row)
    return out


class Recommender:
    def __init__(
        self, store: VectorStore, category_field: str | None = None, colour_field: str | None = None, exact: bool = True
    ):
        self.store, self.category_field, self.colour_field = store, category_field, colour_field
        self.exact = exact  # False: the store's HNSW index ranks (a million products), as `serve --search approximate`
        self._snap: Snapshot | None = None
        self._snap_key = None
        self._centrality = None
        self._lock = threading.Lock()
        self._galleries: dict = {}  # offsets function → StoreGallery (see `gallery`)

    # --- catalogue view ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        key = self.store.version()  # moves with writes made by any worker or process
        with self._lock:
            if self._snap is None or self._snap_key != key:
                self._snap = Snapshot(*self.store.items())
                self._snap_key, self._centrality = key, None
            return self._snap

    def catalogue_counts(self) -> dict:
        s = self.snapshot()
        new = s.new_mask
        cats = [str(m.get(self.category_field, "")) for m in s.metadata] if self.category_field else []
        return {
            "size": len(s.ids),
            "new": int(new.sum()),
            "established": int((~new).sum()),
            "per_category": dict(Counter(cats).most_common()) if cats else {},
            "new_per_category": dict(Counter(c for c, n in zip(cats, new) if n).most_common()) if cats else {},
        }

    # --- ranking -----------------------------------------------------------------------------------
    def rank(
        self,
        queries: np.ndarray,
        k: int,
        filters: dict | None = None,
        diversity: float = 0.0,
        exclude_ids: list[str] | None = None,
        bias: Offsets | None = None,
    ) -> list[dict]:
        """For each query: {items: [(id, score, metadata)], intra_list_diversity, certified, depth}, ranked by
        `retrieval.ranking.rank` as `lookalike search` and evaluation rank. diversity = 1 − MMR λ.

        `bias` maps stored vectors to score offsets (the hubness correction of JSON and text queries,
        `QueryEncoder.hub_bias`): the store's cosine top-D is re-scored with them and D deepened until the
        list is certified to be the exact one (retrieval/ranking.py; `benchmarks/ablations.py --parts depth`
        prints how deep that goes). `certified` and `depth` say, per list, whether it was and how deep."""
        lists = ranking.rank(
            queries,
            self.gallery(bias),
            k,
            corrected=bias is not None,
            exclude_ids=exclude_ids,
            filters=filters,
            diversity=diversity,
        )
        return [
            {
                "items": [(i, float(sc), md) for i, sc, md in zip(r.ids, r.scores, r.metadata or [])],
                "intra_list_diversity": (
                    round(intra_list_diversity(r.vectors), 4) if r.vectors is not None and len(r.ids) > 1 else 0.0
                ),
                "certified": r.certified,
                "depth": r.depth,
            }
            for r in lists
        ]

    def gallery(self, offsets: Offsets | None = None) -> StoreGallery:
        """The store as a gallery for `rank`, one per offsets function: each keeps the bound on its offsets
        (computed in the background once per store version)."""
        with self._lock:
            g = self._galleries.get(offsets)
            if g is None:
                g = self._galleries[offsets] = StoreGallery(self.store, offsets, exact=self.exact)
            return g

    def customer_input(
        self,
        query: np.ndarray,
        k: int,
        filters: dict | None = None,
        diversity: float = 0.0,
        exclude_ids: list[str] | None = None,
    ) -> dict:
        flt = {**(filters or {}), **NEW}
        return self.rank(query[None, :], k, flt, diversity, exclude_ids)[0]

    # --- best sellers ------------------------------------------------------------------------------
    def best_by_sales(self, sales: dict[str, float], fraction: float) -> list[tuple[str, float]]:
        """The top `fraction` of the given products by units sold (at least one), best first."""
        if not sales:
            raise LookalikeError("sales figures are empty")
        missing = [i for i, it in zip(sales, self.store.get_many(list(sales))) if it is None]
        if missing:
            raise LookalikeError(f"unknown product id(s) in sales figures: {missing[:10]}")
        n = max(1, round(len(sales) * fraction))
        return sorted(sales.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def best_by_centrality(self, fraction: float, limit: int) -> tuple[list[tuple[str, float]], int]:
        """Established products whose image is most central (the best-seller proxy); and the anchor-set size."""
        s = self.snapshot()
        old = np.flatnonzero(~s.new_mask)
        if len(old) == 0:
            raise LookalikeError("the catalogue has no established (non-new) products to take best sellers from")
        with self._lock:
            if self._centrality is None:
                self._centrality = centrality_scores(s.vectors[old])
            scores = self._centrality
        n_anchor = max(1, round(len(old) * fraction))
        order = np.lexsort((old, -scores))[: min(n_anchor, limit)]
        return [(s.ids[old[j]], float(scores[j])) for j in order], n_anchor

    def top10_to_new(
        self,
        sellers: list[dict],
        vectors: np.ndarray,
        k: int,
        merged_k: int,
        diversity: float = 0.0,
        filters: dict | None = None,
    ) -> dict:
        """sellers[i] (id/label + why it was picked) has vectors[i]; each gets its top-k new products."""
        flt = {**(filters or {}), **NEW}
        lists = self.rank(vectors, k, flt, diversity, exclude_ids=[s["id"] for s in sellers if s.get("id")])
        merged: dict[str, dict] = {}
        scores = []
        for seller, res in zip(sellers, lists):
            for rank, (pid, sc, md) in enumerate(res["items"], 1):
                scores.append(sc)
                m = merged.setdefault(pid, {"id": pid, "score": sc, "n_sellers": 0, "best_rank": rank, "metadata": md})
                m["score"] = max(m["score"], sc)
                m["n_sellers"] += 1
                m["best_rank"] = min(m["best_rank"], rank)
        ranking = sorted(merged.values(), key=lambda m: (-m["n_sellers"], -m["score"], m["id"]))[:merged_k]
        return {
            "best_sellers": [{**s, **r} for s, r in zip(sellers, lists)],
            "merged": ranking,
            "trend": self.trend([m["metadata"] for m in merged.values()], np.array(scores, np.float32)),
        }

    def trend(self, matched: list[dict], scores: np.ndarray) -> dict:
        s = self.snapshot()
        new_md = [m for m, n in zip(s.metadata, s.new_mask) if n]
        out: dict = {"n_matches": len(matched), "new_collection_size": len(new_md)}
        for name, field in (("category_mix", self.category_field), ("colour_mix", self.colour_field)):
            if field:
                out[name] = {
                    "field": field,
                    "values": mix(
                        [str(m.get(field, "")) for m in matched], Counter(str(m.get(field, "")) for m in new_md)
                    ),
                }
        if len(scores):
            hist, edges = np.histogram(scores, bins=10)
            out["similarity"] = {
                "mean": round(float(scores.mean()), 4),
                "min": round(float(scores.min()), 4),
                "max": round(float(scores.max()), 4),
                **{f"p{q}": round(float(np.percentile(scores, q)), 4) for q in (10, 50, 90)},
                "histogram": {"counts": hist.tolist(), "edges": [round(float(e), 4) for e in edges]},
            }
        return out
