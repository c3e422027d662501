"""Offline evaluation of the profile methods on logged sessions (`lookalike evaluate-sessions`).

Each customer's events are replayed in time order: before each click or purchase, the customer's earlier events
(not impressions; the latest `max_history`) are the history, and the product clicked or bought is the one right
answer. Every method ranks the whole catalogue (not only new products: a logged session clicks whatever it clicks),
its history's products left out, through `Recommender.for_history`: the last event alone, the weighted mean, and
the multi-interest profile. hit@10, nDCG@10 (one relevant item: 1 / log2(rank + 1)) and MRR (over the top `depth`)
per method.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.recommend.events import parse_ts
from lookalike.recommend.profile import History, ProfileSettings
from lookalike.recommend.recommender import Recommender
from lookalike.retrieval.stores import VectorStore

METHODS = ("last item", "mean", "multi-interest")
TARGETS = ("click", "purchase")
HISTORY_TYPES = ("view", "click", "cart", "purchase")


def replay(
    rows: list[dict],
    store: VectorStore,
    k: int = 10,
    depth: int = 100,
    max_history: int = 50,
    settings: ProfileSettings | None = None,
    max_cases: int | None = None,
) -> dict:
    """{methods: {method: {hit@k, ndcg@k, mrr}}, cases, skipped: {reason: rows}} over the rows' sessions."""
    skipped: Counter[str] = Counter()
    by_customer: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    now = math.inf
    for r in rows:
        try:
            ts = parse_ts(r.get("ts"), now)
        except ValueError:
            skipped["malformed timestamp"] += 1
            continue
        kind = r.get("type")
        if kind == "impression":
            continue
        if kind not in HISTORY_TYPES or not r.get("customer_id") or not r.get("product_id"):
            skipped["unusable row"] += 1
            continue
        by_customer[str(r["customer_id"])].append((ts, str(r["product_id"]), kind))
    pids = sorted({p for evs in by_customer.values() for _, p, _ in evs})
    vectors = {it.id: it.vector for it in store.get_many(pids) if it is not None}
    skipped["unknown product"] += sum(p not in vectors for evs in by_customer.values() for _, p, _ in evs)
    rec = Recommender(store)
    sums = {m: np.zeros(3) for m in METHODS}
    cases = 0
    for customer in sorted(by_customer):
        evs = sorted((e for e in by_customer[customer] if e[1] in vectors), key=lambda e: (e[0], e[1]))
        for t in range(1, len(evs)):
            if evs[t][2] not in TARGETS:
                continue
            if max_cases is not None and cases >= max_cases:
                break
            past = evs[max(0, t - max_history) : t]
            ids = [p for _, p, _ in past]
            target = evs[t][1]
            h = History(
                np.stack([vectors[p] for p in ids]), [e for _, _, e in past], [ts for ts, _, _ in past], ids, ids
            )
            last = History(h.vectors[-1:], h.types[-1:], h.times[-1:], ids[-1:], ids[-1:])
            for m in METHODS:
                hist, profile = (last, "mean") if m == "last item" else (h, "mean" if m == "mean" else m)
                res = rec.for_history(hist, depth, profile, settings, exclude_ids=ids, new_only=False)
                got = [i for i, _, _ in res["items"]]
                rank = got.index(target) + 1 if target in got else None
                if rank is not None:
                    sums[m] += [rank <= k, (1 / math.log2(rank + 1)) if rank <= k else 0.0, 1 / rank]
            cases += 1
    if not cases:
        raise LookalikeError("no click or purchase follows an earlier event of the same customer: nothing to replay")
    return {
        "cases": cases,
        "customers": len(by_customer),
        "k": k,
        "methods": {
            m: {f"hit@{k}": round(s[0] / cases, 4), f"ndcg@{k}": round(s[1] / cases, 4), "mrr": round(s[2] / cases, 4)}
            for m, s in sums.items()
        },
        "skipped": dict(skipped.most_common()),
    }
