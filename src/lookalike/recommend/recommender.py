"""The two recommenders on one store, and plain search.

- customer_input: a photo or a clicked product → the top-K most similar *new* products.
- top10_to_new: best sellers (top fraction by units sold when sales are given; otherwise the most
  central established products, the centrality proxy) → for each its top-K new products, a merged
  ranking, and trend figures (category / colour mix of the matches against the new collection, and
  the similarity distribution).
Every list can be reranked by MMR for diversity; responses report their intra-list diversity.

Catalogue counts (size, new, per category) and the new collection's category / colour mixes come from the
store's own counts (O(1), exact at every version); centrality comes from the whole-catalogue statistics
(statistics.py), computed per store version, in the service by a background thread.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.evaluation.diversity import intra_list_diversity
from lookalike.recommend.events import EventLog
from lookalike.recommend.profile import (
    History,
    ProfileSettings,
    allocate,
    event_weights,
    interests,
    mean_query,
    merge,
)
from lookalike.recommend.statistics import FLAG, BackgroundStatistics, CatalogueStatistics, OnDemandStatistics
from lookalike.retrieval import ranking
from lookalike.retrieval.ranking import Offsets, Rerank, StoreGallery
from lookalike.retrieval.stores import VectorStore
from lookalike.retrieval.stores.base import count_key

NEW = {FLAG: True}
EMPTY = (
    "the catalogue holds no product yet: fill it with `lookalike catalog ingest` (or add products with POST /api/items)"
)


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
        self,
        store: VectorStore,
        category_field: str | None = None,
        colour_field: str | None = None,
        exact: bool = True,
        statistics: OnDemandStatistics | BackgroundStatistics | None = None,
    ):
        """Declares the counts it reads (`is_new`, the category and colour fields) to the store: a no-op once
        declared, else one recount of the store. `statistics`: the service's background statistics; by
        default they are computed on demand."""
        self.store, self.category_field, self.colour_field = store, category_field, colour_field
        self.exact = exact  # False: the store's HNSW index ranks (a million products), as `serve --search approximate`
        self.statistics = statistics or OnDemandStatistics(store)
        store.count_by([f for f in (category_field, colour_field) if f], flag=FLAG)
        self._lock = threading.Lock()
        self._galleries: dict = {}  # offsets function → StoreGallery (see `gallery`)

    # --- catalogue view ----------------------------------------------------------------------------
    def catalogue_counts(self) -> dict:
        """Size, new, established and per category, from the store's counts (O(1); exact at `version`)."""
        c = self.store.counts()
        cat = self.category_field
        return {
            "size": c.size,
            "new": c.flagged,
            "established": c.size - c.flagged,
            "per_category": c.per_value(cat) if cat else {},
            "new_per_category": c.per_value(cat, flagged=True) if cat else {},
            "version": c.version,
        }

    def require_products(self) -> None:
        """A recommendation on an empty catalogue says so (rather than naming a filter field no product has)."""
        if self.store.counts().size == 0:
            raise LookalikeError(EMPTY)

    # --- ranking -----------------------------------------------------------------------------------
    def rank(
        self,
        queries: np.ndarray,
        k: int,
        filters: dict | None = None,
        diversity: float = 0.0,
        exclude_ids: list[str] | None = None,
        bias: Offsets | None = None,
        rerank: Rerank | None = None,
    ) -> list[dict]:
        """For each query: {items: [(id, score, metadata)], intra_list_diversity, certified, depth}, ranked by
        `retrieval.ranking.rank` as `lookalike search` and evaluation rank. diversity = 1 − MMR λ.

        `bias` maps stored vectors to score offsets (the hubness correction of JSON and text queries,
        `QueryEncoder.hub_bias`): the store's cosine top-D is re-scored with them and D deepened until the
        list is certified to be the exact one (retrieval/ranking.py; `benchmarks/ablations.py --parts depth`
        prints how deep that goes). `certified` and `depth` say, per list, whether it was and how deep.
        `rerank`: S2's second stage orders the top `rerank.depth` (`reranker` names it in each list)."""
        lists = ranking.rank(
            queries,
            self.gallery(bias),
            k,
            corrected=bias is not None,
            exclude_ids=exclude_ids,
            filters=filters,
            diversity=diversity,
            rerank=rerank,
        )
        return [
            {
                "items": [(i, float(sc), md) for i, sc, md in zip(r.ids, r.scores, r.metadata or [])],
                "intra_list_diversity": (
                    round(intra_list_diversity(r.vectors), 4) if r.vectors is not None and len(r.ids) > 1 else 0.0
                ),
                "certified": r.certified,
                "depth": r.depth,
                "reranker": r.reranker,
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

    def for_history(
        self,
        history: History,
        k: int,
        profile: str = "multi-interest",
        settings: ProfileSettings | None = None,
        filters: dict | None = None,
        diversity: float = 0.0,
        exclude_ids: list[str] | None = None,
        new_only: bool = True,
        tower=None,
        rerank: Rerank | None = None,
    ) -> dict:
        """A customer's history → the top-k new products (any product with `new_only=False`; recommend/profile.py):
        one weighted-mean query (`profile="mean"`) or one query per interest, merged in proportion to the
        interests' weights. Every list is ranked by `retrieval.ranking.rank`. Returns {items: [(id, score,
        metadata)], item_interests (the interest each item came from), interests: [{size, weight, medoid,
        members}], intra_list_diversity}."""
        s = settings or ProfileSettings()
        w = event_weights(history, s)
        flt = {**(filters or {}), **(NEW if new_only else {})}
        if profile == "mean":
            q = mean_query(history, w)
            sims = history.vectors @ q
            found = [(np.arange(len(w)), int(np.argmax(sims)), 1.0, q)]
        elif profile == "tower":
            if tower is None:
                raise LookalikeError("profile=tower needs a trained user tower (serve --user-tower U.pt)")
            q = tower.encode(history.vectors, history.types, history.times)
            found = [(np.arange(len(w)), int(np.argmax(history.vectors @ q)), 1.0, q)]
        elif profile == "multi-interest":
            keys = self.interest_keys(history, s.interest_fields) if s.interest_fields else None
            found = [(i.members, i.medoid, i.weight, i.query) for i in interests(history, w, s, keys)]
        else:
            raise LookalikeError(f"unknown profile {profile!r}: multi-interest, mean or tower")
        queries = np.stack([f[3] for f in found])
        agreed = (
            self._agreed(history, [f[0] for f in found], s.interest_fields) if profile == "multi-interest" else [{}]
        )
        if any(agreed):  # each interest ranks within the values its events agree on
            lists = [
                ranking.rank(
                    q,
                    self.gallery(None),
                    k,
                    exclude_ids=exclude_ids,
                    filters={**flt, **a},
                    diversity=diversity,
                    rerank=rerank,
                )[0]
                for q, a in zip(queries, agreed)
            ]
        else:
            lists = ranking.rank(
                queries, self.gallery(None), k, exclude_ids=exclude_ids, filters=flt, diversity=diversity, rerank=rerank
            )
        rows = [
            [(i, float(sc), md, v) for i, sc, md, v in zip(r.ids, r.scores, r.metadata or [], r.vectors)]  # type: ignore[arg-type]
            for r in lists
        ]
        for j, a in enumerate(agreed):
            if a and len(rows[j]) < k:  # too few share those values: the rest of the catalogue follows
                more = ranking.rank(
                    queries[j], self.gallery(None), k, exclude_ids=exclude_ids, filters=flt, rerank=rerank
                )[0]
                have = {r[0] for r in rows[j]}
                rows[j] += [
                    (i, float(sc), md, v)
                    for i, sc, md, v in zip(more.ids, more.scores, more.metadata or [], more.vectors)  # type: ignore[arg-type]
                    if i not in have
                ][: k - len(rows[j])]
        picked = merge(rows, allocate([f[2] for f in found], k), k)
        vecs = np.stack([it[3] for _, it in picked]) if picked else np.zeros((0, queries.shape[1]), np.float32)
        return {
            "items": [(it[0], it[1], it[2]) for _, it in picked],
            "item_interests": [j for j, _ in picked],
            "interests": [
                {
                    "size": len(members),
                    "weight": round(weight, 4),
                    "medoid": history.labels[medoid],
                    "members": [history.labels[m] for m in members],
                    **({"filters": a} if a else {}),
                }
                for (members, medoid, weight, _), a in zip(found, agreed)
            ],
            "intra_list_diversity": round(intra_list_diversity(vecs), 4) if len(vecs) > 1 else 0.0,
            "reranker": lists[0].reranker if lists else None,
        }

    def interest_keys(self, history: History, fields: tuple[str, ...]) -> list[tuple | None]:
        """Per event, its stored product's values of the interest fields (None for a query, or a product lacking
        a scalar value of one): what the clustering groups by where known."""
        pids = [p for p in dict.fromkeys(history.product_ids) if p]
        meta = {it.id: it.metadata for it in self.store.get_many(pids) if it is not None}
        out: list[tuple | None] = []
        for p in history.product_ids:
            vals = tuple(meta[p].get(f) for f in fields) if p and p in meta else None
            ok = vals is not None and all(isinstance(v, (str, int, float, bool)) and v != "" for v in vals)
            out.append(vals if ok else None)
        return out

    def _agreed(self, history: History, groups: list[np.ndarray], fields: tuple[str, ...]) -> list[dict]:
        """Per interest, the values of `fields` that all its stored products share (scalars only): an interest of
        three black men's T-shirts ranks among men's T-shirts when `fields` names gender and articleType."""
        if not fields:
            return [{} for _ in groups]
        pids = [p for p in dict.fromkeys(history.product_ids) if p]
        meta = {it.id: it.metadata for it in self.store.get_many(pids) if it is not None}
        out = []
        for members in groups:
            mds = [meta[p] for m in members if (p := history.product_ids[m]) and p in meta]
            agreed: dict = {}
            for f in fields:
                vals = {json.dumps(md.get(f), sort_keys=True) for md in mds}
                v = mds[0].get(f) if mds else None
                if len(vals) == 1 and isinstance(v, (str, int, float, bool)):
                    agreed[f] = v
            out.append(agreed)
        return out

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

    def best_by_purchases(
        self, log: EventLog, window_days: int, fraction: float, limit: int, now: float | None = None
    ) -> tuple[list[tuple[str, int]], int]:
        """The established products most sold over the window (units from the purchase events, kept per product and
        day in the events' own transaction), best first, ties by id; and how many products sold in the window.
        The top `fraction` of those, at most `limit`; a product deleted since, or new, is passed over. Empty when
        nothing sold in the window (the caller falls back to the centrality proxy)."""
        want = None
        out: list[tuple[str, int]] = []
        offset, n_sold = 0, 0
        while want is None or len(out) < want:
            rows, n_sold = log.best_sellers(window_days, 2 * (want or limit), offset, now)
            if want is None:
                want = min(max(1, round(n_sold * fraction)), limit) if n_sold else 0
            if not rows or not want:
                break
            for (pid, units), it in zip(rows, self.store.get_many([r[0] for r in rows])):
                if it is not None and it.metadata.get(FLAG) is not True:
                    out.append((pid, units))
            offset += len(rows)
        return out[: want or 0], n_sold

    def best_by_centrality(
        self, fraction: float, limit: int, stats: CatalogueStatistics | None = None
    ) -> tuple[list[tuple[str, float]], int]:
        """Established products whose image is most central (the best-seller proxy); and the anchor-set size.

        `stats` (default: the latest) may describe an earlier store version: a product deleted since, or new
        since, is passed over (each candidate is looked up), so every one returned is stored and established."""
        s = stats or self.statistics.get()
        if s.n_established == 0:
            raise LookalikeError("the catalogue has no established (non-new) products to take best sellers from")
        n_anchor = max(1, round(s.n_established * fraction))
        ids = s.central_ids[:n_anchor]  # most central first, ties by id
        out: list[tuple[str, float]] = []
        want = min(n_anchor, limit)
        for start in range(0, len(ids), 2 * want):
            chunk = ids[start : start + 2 * want]
            for j, it in enumerate(self.store.get_many(chunk), start):
                if it is not None and it.metadata.get(FLAG) is not True:
                    out.append((ids[j], float(s.central_scores[j])))
            if len(out) >= want:
                break
        return out[:want], n_anchor

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
        for res in lists:
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
        """The matches' category / colour mix against the new collection's (the store's counts, O(1)), and
        the similarity distribution; `store_version` is the version the collection figures describe."""
        c = self.store.counts()
        out: dict = {"n_matches": len(matched), "new_collection_size": c.flagged, "store_version": c.version}
        for name, field in (("category_mix", self.category_field), ("colour_mix", self.colour_field)):
            if field:
                out[name] = {
                    "field": field,
                    "values": mix([count_key(m.get(field)) for m in matched], Counter(c.per_value(field, True))),
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
