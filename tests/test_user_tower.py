"""The user tower: trained with InfoNCE on next-click sessions (`lookalike train-user-tower`), it learns what the
weighted mean cannot: here the next click follows the customer's latest interest, not its most frequent one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from lookalike.cli import main
from lookalike.errors import LookalikeError
from lookalike.recommend.events import parse_ts
from lookalike.recommend.profile import History, ProfileSettings
from lookalike.recommend.recommender import Recommender
from lookalike.retrieval.stores import StoreItem, open_store
from lookalike.towers.user import UserTower, age_buckets

DIM, CLUSTERS, PER = 16, 8, 20
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def test_age_buckets_are_log2_days_or_positions():
    day = 86400.0
    assert age_buckets([0.0, 29 * day, 30 * day, 31 * day]).tolist() == [5, 1, 1, 0]  # 31, 2, 1, 0 days old
    assert age_buckets([None, None, 5.0]).tolist() == [1, 1, 0]


def test_a_trained_user_tower_follows_the_latest_interest_where_the_mean_does_not(tmp_path, capsys, one_thread):
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0][:CLUSTERS]
    vecs = centres.repeat(PER, 0) + 0.25 * rng.standard_normal((CLUSTERS * PER, DIM))
    ids = [f"c{c}-{i}" for c in range(CLUSTERS) for i in range(PER)]
    url = f"embedded://{tmp_path}/store"
    store = open_store(url, dim=DIM)
    store.upsert([StoreItem(i, v, {"is_new": False}) for i, v in zip(ids, vecs)])
    store.close()

    def session(n: int) -> list[tuple[str, str, str]]:
        """Four old clicks on interest a, then two recent ones on interest b: the last is the one to predict."""
        a, b = rng.choice(CLUSTERS, 2, replace=False)
        picks = [f"c{a}-{i}" for i in rng.choice(PER, 4, replace=False)] + [
            f"c{b}-{i}" for i in rng.choice(PER, 2, replace=False)
        ]
        days = [40, 39, 38, 37, 1, 0]
        return [(f"cust{n}", p, (NOW - timedelta(days=d)).isoformat()) for p, d in zip(picks, days)]

    train = [e for n in range(400) for e in session(n)]
    f = tmp_path / "sessions.csv"
    f.write_text(
        "event_id,customer_id,type,product_id,ts\n"
        + "".join(f"e{j},{c},click,{p},{ts}\n" for j, (c, p, ts) in enumerate(train))
    )
    main(["train-user-tower", "--events", str(f), "--store", url, "--out", str(tmp_path / "u.pt"), "--epochs", "15"])
    tower = UserTower.load(tmp_path / "u.pt", DIM)
    assert tower.meta["examples"] == 400 * 5 and tower.meta["history"][-1]["loss"] < tower.meta["history"][0]["loss"]

    rec = Recommender(open_store(url))
    hits = {"mean": 0, "tower": 0}
    test = [session(1000 + n) for n in range(60)]
    row = {i: r for r, i in enumerate(ids)}
    for s in test:
        past, target = s[:-1], s[-1][1]
        h = History(
            vecs[[row[p] for _, p, _ in past]].astype(np.float32),
            ["click"] * len(past),
            [parse_ts(ts, float("inf")) for _, _, ts in past],
            [p for _, p, _ in past],
            [p for _, p, _ in past],
        )
        for profile in hits:
            res = rec.for_history(h, 10, profile, ProfileSettings(), exclude_ids=h.labels, new_only=False, tower=tower)
            hits[profile] += target in [i for i, _, _ in res["items"]]
    assert hits["tower"] >= hits["mean"] + 10, hits  # of 60: the tower learnt recency; the mean follows the majority
    with pytest.raises(LookalikeError, match="needs a trained user tower"):
        rec.for_history(h, 10, "tower", new_only=False)


def test_training_batches_hold_every_example_once_with_similar_lengths():
    import random

    from lookalike.training.user_tower import Example, _batches

    rng = np.random.default_rng(1)
    examples = [Example([0] * int(n), [2] * int(n), age_buckets([None] * int(n)), 0) for n in rng.integers(1, 31, 1000)]
    batches = _batches(examples, 16, random.Random(0), pool=8)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp([len(examples[i].rows) for i in b]) for b in batches])
    assert spread < 5  # of 1-30 events: a random batch of 16 spans ~25
