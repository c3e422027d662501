"""Histories as queries: event weights, interests (clusters with medoids and weights), the proportional merge,
and `Recommender.for_history` on a real embedded store of clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.recommend.profile import History, ProfileSettings, allocate, event_weights, interests, merge
from lookalike.recommend.recommender import Recommender
from lookalike.retrieval.stores import StoreItem, open_store

DIM = 16


def directions(n: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((DIM, DIM)))
    return q[:n].astype(np.float32)


def around(centre: np.ndarray, n: int, spread: float, seed: int) -> np.ndarray:
    v = centre + spread * np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def history(vectors: np.ndarray, types=None, times=None) -> History:
    n = len(vectors)
    ids = [f"h{i}" for i in range(n)]
    return History(vectors, types or ["click"] * n, times or [None] * n, ids, ids)


def test_allocate_splits_places_in_proportion_with_one_each():
    assert allocate([0.5, 0.3, 0.2], 10) == [5, 3, 2]
    assert allocate([0.9, 0.05, 0.05], 10) == [7, 2, 1]
    assert allocate([0.6, 0.4], 1) == [1, 0]
    assert sum(allocate([0.37, 0.33, 0.3], 7)) == 7


def test_event_weights_follow_type_and_recency():
    h = history(directions(3), ["view", "click", "purchase"], [0.0, 0.0, 30 * 86400.0])
    w = event_weights(h, ProfileSettings(half_life_days=30))
    assert w == pytest.approx([0.25, 0.5, 3.0])  # the first two are one half-life older than the purchase
    by_position = event_weights(history(directions(2)), ProfileSettings(half_life_events=1))
    assert by_position == pytest.approx([0.5, 1.0])
    with pytest.raises(LookalikeError, match="unknown event type"):
        event_weights(history(directions(1), ["like"]), ProfileSettings())


def test_interests_are_the_history_clusters_without_a_stray_click():
    a, b, c = directions(3)
    v = np.concatenate([around(a, 4, 0.05, 1), around(b, 2, 0.05, 2), c[None, :]])
    found = interests(history(v), np.ones(len(v)), ProfileSettings(query="medoid"))
    assert [sorted(i.members.tolist()) for i in found] == [[0, 1, 2, 3], [4, 5]]
    assert [round(i.weight, 4) for i in found] == [0.6667, 0.3333]
    for i in found:
        assert i.medoid in i.members and np.allclose(i.query, v[i.medoid])
    for i in interests(history(v), np.ones(len(v)), ProfileSettings()):  # by default, the members' mean
        mean = v[i.members].mean(0)
        assert np.allclose(i.query, mean / np.linalg.norm(mean), atol=1e-6)


def test_merge_takes_each_interests_places_without_repeats_and_fills_short_ones():
    lists = [[("x", 0.9), ("y", 0.8), ("z", 0.7)], [("y", 0.95), ("w", 0.6)]]
    assert [(j, it[0]) for j, it in merge(lists, [2, 2], 4)] == [(0, "x"), (1, "y"), (0, "z"), (1, "w")]
    assert [it[0] for _, it in merge([[("a", 1.0)], [("b", 1.0), ("c", 0.5), ("d", 0.2)]], [2, 1], 3)] == [
        "a",
        "b",
        "c",
    ]


def test_multi_interest_covers_both_interests_where_the_mean_covers_one(tmp_path):
    a, b = directions(2, seed=5)
    store = open_store(f"embedded://{tmp_path}/store", dim=DIM)
    new_a, new_b = around(a, 30, 0.35, 3), around(b, 30, 0.35, 4)
    store.upsert(
        [StoreItem(f"a{i}", v, {"is_new": True}) for i, v in enumerate(new_a)]
        + [StoreItem(f"b{i}", v, {"is_new": True}) for i, v in enumerate(new_b)]
    )
    # three clicks on interest a, one purchase (weight 3) on interest b, and a lone click between them
    v = np.concatenate([around(a, 3, 0.05, 6), around(b, 2, 0.05, 7)])
    h = history(v, ["click", "click", "click", "purchase", "purchase"])
    rec = Recommender(store)
    multi = rec.for_history(h, 10)
    assert len(multi["interests"]) == 2 and {it["size"] for it in multi["interests"]} == {2, 3}
    ids = [i for i, _, _ in multi["items"]]
    assert len(set(ids)) == 10 and {i[0] for i in ids} == {"a", "b"}
    first = {it["size"]: "a" if it["medoid"] in ("h0", "h1", "h2") else "b" for it in multi["interests"]}
    assert first == {3: "a", 2: "b"}
    for (pid, _, _), j in zip(multi["items"], multi["item_interests"]):
        assert pid[0] == first[multi["interests"][j]["size"]]  # each result names the interest it came from
    # the two purchases outweigh the three clicks: b is first, and the places follow the weights
    assert multi["interests"][0]["size"] == 2
    assert np.bincount(multi["item_interests"]).tolist() == allocate([it["weight"] for it in multi["interests"]], 10)
    mean = rec.for_history(h, 10, profile="mean")
    assert len(mean["interests"]) == 1 and mean["item_interests"] == [0] * 10
    with pytest.raises(LookalikeError, match="unknown profile"):
        rec.for_history(h, 10, profile="lstm")


def test_evaluate_sessions_replays_each_next_click(tmp_path, capsys):
    import json

    from lookalike.cli import main

    a, b = directions(2, seed=8)
    url = f"embedded://{tmp_path}/store"
    store = open_store(url, dim=DIM)
    store.upsert(
        [StoreItem(f"a{i}", v, {"is_new": False}) for i, v in enumerate(around(a, 2, 0.05, 1))]
        + [StoreItem(f"b{i}", v, {"is_new": False}) for i, v in enumerate(around(b, 30, 0.3, 2))]
    )
    store.close()
    f = tmp_path / "sessions.csv"
    rows = [
        ("1", "c1", "click", "a0", "2026-01-01T10:00:00Z"),
        ("2", "c1", "impression", "b3", "2026-01-01T10:00:30Z"),
        ("3", "c1", "purchase", "a1", "2026-01-01T10:01:00Z"),
        ("4", "c3", "cart", "a1", "2026-01-01T10:02:00Z"),
        ("8", "c3", "click", "a0", "2026-01-01T10:04:00Z"),
        ("5", "c2", "click", "b0", "2026-01-01T10:00:00Z"),  # one event: nothing to predict
        ("6", "c2", "click", "zz", "2026-01-01T10:03:00Z"),
        ("7", "c2", "click", "b1", "whenever"),
    ]
    f.write_text("event_id,customer_id,type,product_id,ts\n" + "".join(",".join(r) + "\n" for r in rows))
    main(["evaluate-sessions", "--events", str(f), "--store", url])
    rep = json.loads(capsys.readouterr().out)
    assert rep["cases"] == 2 and rep["skipped"] == {"malformed timestamp": 1, "unknown product": 1}
    for m in ("last item", "mean", "multi-interest"):
        assert rep["methods"][m] == {"hit@10": 1.0, "ndcg@10": 1.0, "mrr": 1.0}  # the cluster's next product first


def test_an_interest_ranks_among_the_values_its_events_agree_on(tmp_path):
    a, b = directions(2, seed=9)
    store = open_store(f"embedded://{tmp_path}/store", dim=DIM)
    # new products near interest a: half shirts, half shoes; the shoes lie a little nearer the clicks
    near = around(a, 12, 0.2, 1)
    store.upsert(
        [StoreItem(f"shoe{i}", near[i], {"is_new": True, "type": "shoes"}) for i in range(6)]
        + [StoreItem(f"shirt{i}", near[6 + i] * 0.8 + a * 0.2, {"is_new": True, "type": "shirts"}) for i in range(6)]
        + [StoreItem(f"h{i}", v, {"is_new": False, "type": "shirts"}) for i, v in enumerate(around(a, 3, 0.05, 2))]
        + [StoreItem("b-shirt", b, {"is_new": True, "type": "shirts"})]
    )
    hist = History(
        np.stack([store.get(f"h{i}").vector for i in range(3)]),
        ["click"] * 3,
        [None] * 3,
        *[[f"h{i}" for i in range(3)]] * 2,
    )
    rec = Recommender(store)
    plain = rec.for_history(hist, 6)
    typed = rec.for_history(hist, 6, settings=ProfileSettings(interest_fields=("type",)))
    assert typed["interests"][0]["filters"] == {"type": "shirts"} and "filters" not in plain["interests"][0]
    assert {md["type"] for _, _, md in typed["items"]} == {"shirts"}
    assert {md["type"] for _, _, md in plain["items"]} == {"shirts", "shoes"}
    # fewer products share the values than asked for: the rest of the catalogue follows
    more = rec.for_history(hist, 10, settings=ProfileSettings(interest_fields=("type",)))
    assert [md["type"] for _, _, md in more["items"]][:7] == ["shirts"] * 7 and len(more["items"]) == 10


def test_lookalike_recommend_history_from_the_command_line(tmp_path, capsys):
    import json

    from lookalike.cli import main

    a, b = directions(2, seed=10)
    url = f"embedded://{tmp_path}/store"
    store = open_store(url, dim=DIM)
    store.upsert(
        [
            StoreItem(f"n{i}", v, {"is_new": True})
            for i, v in enumerate(np.concatenate([around(a, 8, 0.3, 1), around(b, 8, 0.3, 2)]))
        ]
        + [
            StoreItem(f"h{i}", v, {"is_new": False})
            for i, v in enumerate(np.concatenate([around(a, 2, 0.05, 3), around(b, 2, 0.05, 4)]))
        ]
    )
    store.close()
    main(["recommend", "--history", "h0", "h1", "h2", "h3", "-k", "6", "--store", url, "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "multi-interest" and [i["size"] for i in out["interests"]] == [2, 2]
    assert len(out["items"]) == 6 and {it["interest"] for it in out["items"]} == {0, 1}
    assert all(it["id"].startswith("n") for it in out["items"])
    with pytest.raises(SystemExit):
        main(["recommend", "--history", "h0", "nope", "--store", url])
    assert "unknown product id(s) ['nope']" in capsys.readouterr().err


def test_interest_fields_decide_the_clustering_where_the_products_have_them():
    a, b, c, d = directions(4, seed=11)
    # three shirt clicks whose images lie apart (alone, each a lone event, dropped beside the shoe cluster), three
    # shoes close together, and a shoe-looking bag: the fields make the shirts one interest and the bag its own
    shirts = np.stack([a, b, c])
    shoes = around(d, 4, 0.05, 3)
    h = history(np.concatenate([shirts, shoes]).astype(np.float32))
    w = event_weights(h, ProfileSettings())
    plain = interests(h, w, ProfileSettings())
    assert [sorted(i.members.tolist()) for i in plain] == [[3, 4, 5, 6]]  # the shirts are lost, the bag is a shoe
    keys = [("shirt",)] * 3 + [("shoe",)] * 3 + [("bag",)]
    typed = interests(h, w, ProfileSettings(), keys)
    assert sorted(sorted(i.members.tolist()) for i in typed) == [[0, 1, 2], [3, 4, 5]]  # the lone bag dropped
    # where a key is unknown (a photo, a text query), the image space decides: the photo joins the shoes
    typed = interests(h, w, ProfileSettings(), [*keys[:6], None])
    assert sorted(sorted(i.members.tolist()) for i in typed) == [[0, 1, 2], [3, 4, 5, 6]]
