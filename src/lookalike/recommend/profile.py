"""A customer's history as the query: event weights, the single weighted-mean profile, and multi-interest profiles.

A history is a list of vectors in the image space (products clicked, carted or bought, uploaded photos, text or
attribute queries put there by the towers), oldest first, each with an event type and, where known, a time.
Each event weighs `event_weights[type]` × 0.5 ^ (age / half-life): age in days before the newest event when the
events have times, else in events before the last one.

- `mean`: the weighted mean of the history, one query (the baseline).
- `multi-interest` (the default): as PinnerSage does, the history is clustered in the image space (average-linkage
  on cosine distance, cut at `cut`), each cluster is an *interest* with a medoid (the member with the greatest
  weighted similarity to the others) and an importance (the sum of its events' weights). Its query is the weighted
  mean of its events (`query="mean"`; on benchmarks/personalise.py's simulated customers it did better than the
  medoid PinnerSage queries with) or the medoid. With `interest_fields`, the products' values of those fields
  decide the clustering where known (equal values: one interest; different: two), and an interest ranks among the
  products that share the values its events agree on (e.g. the articleType of three T-shirts). Interests of
  one event are dropped when some interest has more (a stray click is not an interest); at most `max_interests`
  are kept. Each interest is ranked by `retrieval.ranking.rank` and the lists are merged in proportion to the
  interests' weights (largest remainder, at least one place each), interleaved so every interest is near the top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.vectors import unit

PROFILES = ("multi-interest", "mean", "tower")
EVENT_WEIGHTS = {"impression": 0.25, "view": 0.5, "click": 1.0, "cart": 2.0, "purchase": 3.0, "query": 1.0}
MAX_HISTORY = 200


@dataclass(frozen=True)
class ProfileSettings:
    """How a history is weighed and split into interests (`serve` can set each)."""

    event_weights: dict[str, float] = field(default_factory=lambda: dict(EVENT_WEIGHTS))
    half_life_days: float = 30.0  # recency when the events have times
    half_life_events: float = 20.0  # recency by position when they do not
    cut: float = 0.6  # cosine distance at which the history's clusters stop merging (benchmarks/personalise.py)
    max_interests: int = 5
    query: str = "mean"  # an interest's query: the weighted mean of its events, or its medoid (as PinnerSage)
    interest_fields: tuple[str, ...] = ()  # an interest ranks among products sharing the values its events agree on

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.event_weights.items() if not (isinstance(v, (int, float)) and v >= 0)}
        if bad:
            raise LookalikeError(f"event weights must be numbers ≥ 0, got {bad}")
        for name in ("half_life_days", "half_life_events", "cut"):
            if not getattr(self, name) > 0:
                raise LookalikeError(f"{name} must be positive, got {getattr(self, name)}")
        if self.query not in ("medoid", "mean"):
            raise LookalikeError(f"an interest's query is its medoid or mean, got {self.query!r}")
        if self.max_interests < 1:
            raise LookalikeError(f"max_interests must be at least 1, got {self.max_interests}")


@dataclass
class History:
    """Vectors (n, d), oldest first, with their event types, times (epoch seconds or None) and labels."""

    vectors: np.ndarray
    types: list[str]
    times: list[float | None]
    labels: list[str]  # a product id, or what the query was ("image photo.jpg", "text …")
    product_ids: Sequence[str | None]

    def __post_init__(self) -> None:
        if not len(self.vectors):
            raise LookalikeError("the history is empty")
        if len(self.vectors) > MAX_HISTORY:
            raise LookalikeError(f"a history holds at most {MAX_HISTORY} events, got {len(self.vectors)}")


@dataclass
class Interest:
    members: np.ndarray  # rows of the history
    medoid: int  # a row of the history
    weight: float  # share of the history's weight (the kept interests' shares sum to 1)
    query: np.ndarray


def event_weights(h: History, s: ProfileSettings) -> np.ndarray:
    """Each event's weight: its type's weight × its recency (see the module docstring)."""
    unknown = sorted({t for t in h.types if t not in s.event_weights})
    if unknown:
        raise LookalikeError(f"unknown event type(s) {unknown} in the history; known: {sorted(s.event_weights)}")
    w = np.array([s.event_weights[t] for t in h.types], np.float64)
    if all(t is not None for t in h.times):
        t = np.array(h.times, np.float64)
        age = (t.max() - t) / 86400.0 / s.half_life_days
    else:
        age = (len(h.types) - 1 - np.arange(len(h.types))) / s.half_life_events
    w = w * np.power(0.5, age)
    if not w.sum() > 0:
        raise LookalikeError("every event of the history has weight 0 (see the event weights)")
    return w


def mean_query(h: History, w: np.ndarray) -> np.ndarray:
    return unit((w[:, None] * unit(h.vectors.astype(np.float64))).sum(0)).astype(np.float32)


def interests(
    h: History, w: np.ndarray, s: ProfileSettings, keys: Sequence[tuple | None] | None = None
) -> list[Interest]:
    """The history's interests, most important first (see the module docstring).

    `keys`: per event, the values of the interest fields (None where unknown: a photo, a text, a product lacking
    one). Two events with keys are one interest when their keys are equal and never when they differ; the image
    space decides the rest. Without keys, three clicks of one interest whose images lie apart are three lone
    events, dropped beside a real cluster: the whole interest is lost (benchmarks/personalise.py prints how many
    interests it finds against the simulated ones)."""
    v = unit(h.vectors.astype(np.float64))
    n = len(v)
    if n == 1:
        return [Interest(np.array([0]), 0, 1.0, v[0].astype(np.float32))]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    sims = np.clip(v @ v.T, -1.0, 1.0)
    dist = 1.0 - sims
    if keys is not None and any(k is not None for k in keys):
        known = np.array([k is not None for k in keys])
        codes = {k: j for j, k in enumerate(dict.fromkeys(k for k in keys if k is not None))}
        code = np.array([codes[k] if k is not None else -1 for k in keys])
        both = known[:, None] & known[None, :]
        same = code[:, None] == code[None, :]
        dist = np.where(both & same, 0.0, np.where(both, 2.0, dist))
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(linkage(squareform(np.maximum(dist, 0.0), checks=False), "average"), s.cut, "distance")
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    if any(len(g) > 1 for g in groups):
        groups = [g for g in groups if len(g) > 1]
    out = []
    for g in groups:
        central = (sims[np.ix_(g, g)] * w[g][None, :]).sum(1)
        medoid = int(g[np.lexsort((g, -central))[0]])  # ties: the earlier event
        query = v[medoid] if s.query == "medoid" else unit((w[g][:, None] * v[g]).sum(0))
        out.append(Interest(g, medoid, float(w[g].sum()), query.astype(np.float32)))
    out.sort(key=lambda i: (-i.weight, i.medoid))
    out = out[: s.max_interests]
    total = sum(i.weight for i in out)
    for i in out:
        i.weight /= total
    return out


def allocate(weights: list[float], k: int) -> list[int]:
    """k places split in proportion to the weights (largest remainder), at least one each while k allows."""
    m = len(weights)
    base = [1 if j < k else 0 for j in range(m)]
    rest = k - sum(base)
    share = [w * rest for w in weights]
    slots = [b + math.floor(x) for b, x in zip(base, share)]
    left = k - sum(slots)
    for j in sorted(range(m), key=lambda j: (-(share[j] - math.floor(share[j])), j))[:left]:
        slots[j] += 1
    return slots


def merge(lists: list[list[tuple]], slots: list[int], k: int) -> list[tuple[int, tuple]]:
    """(interest, item) pairs: each interest's list gives its `slots` best items not taken already, interleaved
    place by place in interest order; places an interest cannot fill go to the others' next items. Items are
    tuples whose first element is the id."""
    taken: set = set()
    pos = [0] * len(lists)
    out: list[tuple[int, tuple]] = []

    def next_item(j: int) -> tuple | None:
        while pos[j] < len(lists[j]):
            it = lists[j][pos[j]]
            pos[j] += 1
            if it[0] not in taken:
                return it
        return None

    got = [0] * len(lists)
    for rnd in range(max(slots, default=0)):
        for j in range(len(lists)):
            if rnd < slots[j] and len(out) < k:
                it = next_item(j)
                if it is not None:
                    taken.add(it[0])
                    out.append((j, it))
                    got[j] += 1
    while len(out) < k:  # an interest ran short: the others fill its places, most important first
        progressed = False
        for j in range(len(lists)):
            if len(out) < k and (it := next_item(j)) is not None:
                taken.add(it[0])
                out.append((j, it))
                progressed = True
        if not progressed:
            break
    return out
