"""The one ranking function: in memory and on a store, the same lists; a store's certified re-scoring depth."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.retrieval.ranking import FIRST_DEPTH, Gallery, OffsetBound, StoreGallery, diversity_pool, rank
from lookalike.retrieval.stores import StoreItem, open_store
from lookalike.vectors import unit

DIM = 24


def _brute(q: np.ndarray, vectors: np.ndarray, ids: list[str], offsets: np.ndarray | None, k: int) -> list[str]:
    s = vectors.astype(np.float64) @ q.astype(np.float64) + (0 if offsets is None else offsets)
    return [ids[j] for j in sorted(range(len(ids)), key=lambda j: (-s[j], ids[j]))[:k]]


def _hubby(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items, a query and a 'hub' direction: the items most like the query lie near the hub, so the offset
    −0.6·cos(item, hub) pushes them far down and the corrected top-10 lies deep in the cosine ranking."""
    rng = np.random.default_rng(seed)
    hub = unit(rng.standard_normal(DIM).astype(np.float32))
    side = rng.standard_normal(DIM).astype(np.float32)
    side = unit(side - (side @ hub) * hub)
    q = unit(hub + 0.6 * side)
    t = rng.random(n).astype(np.float32)  # 0: at the hub, 1: at the side
    x = np.outer(1 - t, hub) + np.outer(t, side) + 0.25 * rng.standard_normal((n, DIM)).astype(np.float32)
    return unit(x.astype(np.float32)), q, hub


def _offsets(hub: np.ndarray):
    return lambda v: (-0.6 * (np.asarray(v, np.float32) @ hub)).astype(np.float32)


def test_in_memory_lists_are_exact_with_ties_by_id_whatever_the_row_order():
    x, q, hub = _hubby(300)
    x[50:80] = x[50]  # 30 identical items, tied at every score
    ids = [f"p{(j * 7919) % 1000:03d}" for j in range(300)]  # rows not in id order
    g = Gallery(x, ids, _offsets(hub))
    for corrected in (False, True):
        off = _offsets(hub)(x) if corrected else None
        for query in (q, x[50]):
            top = rank(query, g, 40, corrected=corrected)[0]
            assert top.ids == _brute(query, x, ids, off, 40)
            assert [ids[r] for r in top.rows] == top.ids and top.certified and top.depth == 300
    # leaving a row out of one query, and ids out of every list
    tied = sorted(ids[50:80])
    rows = {i: r for r, i in enumerate(ids)}
    lists = rank(np.stack([x[50], x[50]]), g, 5, exclude=np.array([rows[tied[0]], -1]), exclude_ids=[tied[1]])
    assert lists[0].ids == tied[2:7] and lists[1].ids == [tied[0], *tied[2:6]]
    with pytest.raises(LookalikeError, match="filters need a store"):
        rank(q, g, 5, filters={"a": 1})
    with pytest.raises(LookalikeError, match="diversity"):
        rank(q, g, 5, diversity=1.5)


def test_store_rescoring_deepens_until_certified_and_equals_the_in_memory_list(tmp_path):
    """The corrected top-10 lies past the old fixed depth (cosine top-200): a store list re-scored at that
    depth is wrong, the certificate sees it and deepens until the list is provably the exact one."""
    x, q, hub = _hubby()
    ids = [f"p{j:04d}" for j in range(len(x))]
    offsets = _offsets(hub)
    exact = rank(q, Gallery(x, ids, offsets), 10, corrected=True)[0]
    cos_rank = {ids[j]: r for r, j in enumerate(np.argsort(-(x @ q), kind="stable"))}
    assert max(cos_rank[i] for i in exact.ids) >= FIRST_DEPTH  # the gallery is as built: deeper than 200
    with open_store(f"embedded://{tmp_path}/s?index=hnsw", dim=DIM) as store:
        store.upsert(StoreItem(i, v, {"half": int(i[1:]) % 2}) for i, v in zip(ids, x))
        # the largest offset alone bounds the rest (top=0), or the 100 largest are scored exactly
        for held in (0, 100):
            bound = OffsetBound(store, offsets, start=False, top=held)
            b = bound.wait()
            assert b.max == pytest.approx(float(offsets(x).max()), abs=1e-6) and len(b.ids) == held
            assert b.rest == pytest.approx(float(np.sort(offsets(x))[::-1][held]), abs=1e-6)
            g = StoreGallery(store, offsets, bound)
            top = rank(q, g, 10, corrected=True)[0]
            assert top.ids == exact.ids and top.certified and top.depth > FIRST_DEPTH
            np.testing.assert_allclose(top.scores, exact.scores, atol=1e-5)
        # at the old fixed depth the re-scored list differs from the exact one
        fixed = rank(q, StoreGallery(store, offsets, OffsetBound(store, offsets, start=False)), 10, corrected=True)[0]
        assert not fixed.certified and fixed.depth == FIRST_DEPTH and fixed.ids != exact.ids
        # a filter narrows the candidates; the certificate still holds (the bound covers every item)
        half = rank(q, g, 10, corrected=True, filters={"half": 1})[0]
        odd = [i for i in ids if int(i[1:]) % 2]
        assert half.ids == _brute(q, x[1::2], odd, offsets(x[1::2]), 10) and half.certified
        # image queries (plain cosine) rank by the store's own exact top-k
        plain = rank(q, g, 10)[0]
        assert plain.ids == _brute(q, x, ids, None, 10) and plain.certified and plain.depth == 10
        # candidates from an HNSW graph are never certified (and need no bound)
        approx = StoreGallery(store, offsets, exact=False)
        top = rank(q, approx, 10, corrected=True)[0]
        assert approx.bound is None and not top.certified and top.depth == FIRST_DEPTH and len(top.ids) == 10


def test_offset_bound_follows_the_store_version(tmp_path):
    x, _, hub = _hubby(50)
    offsets = _offsets(hub)
    with open_store(f"embedded://{tmp_path}/s", dim=DIM) as store:
        store.upsert(StoreItem(f"p{j}", v) for j, v in enumerate(x))
        bound = OffsetBound(store, offsets, start=False, top=3)
        first = bound.wait()
        assert first.max == pytest.approx(float(offsets(x).max()), abs=1e-6)
        anti = unit(-hub)  # the largest offset there can be
        store.upsert([StoreItem("anti", anti)])
        b = bound.wait()
        assert b.version > first.version and b.max == pytest.approx(0.6, abs=1e-6) and b.ids[0] == "anti"
        assert b.rest == pytest.approx(float(np.sort(offsets(x))[::-1][2]), abs=1e-6)


def test_diversity_chooses_k_from_the_exact_pool(tmp_path):
    x, q, hub = _hubby(400)
    ids = [f"p{j:03d}" for j in range(400)]
    g = Gallery(x, ids, _offsets(hub))
    plain = rank(q, g, diversity_pool(6), corrected=True)[0]
    diverse = rank(q, g, 6, corrected=True, diversity=0.7)[0]
    assert len(diverse.ids) == 6 and diverse.ids[0] == plain.ids[0] and set(diverse.ids) <= set(plain.ids)
    assert diverse.ids != plain.ids[:6]


def test_the_recommenders_search_is_exact_where_a_fixed_depth_was_not(tmp_path):
    """`/api/search`'s path (Recommender.rank with the offsets): failed before the certified depth, when the
    store's cosine top-max(10k, 200) was re-scored and the corrected top-10 lay deeper."""
    from lookalike.recommend.recommender import Recommender

    x, q, hub = _hubby()
    ids = [f"p{j:04d}" for j in range(len(x))]
    offsets = _offsets(hub)
    exact = rank(q, Gallery(x, ids, offsets), 10, corrected=True)[0]
    with open_store(f"embedded://{tmp_path}/s", dim=DIM) as store:
        store.upsert(StoreItem(i, v) for i, v in zip(ids, x))
        rec = Recommender(store)
        rec.gallery(offsets).bound.wait()  # the service starts it at start-up
        res = rec.rank(q[None, :], 10, bias=offsets)[0]
        assert [i for i, _, _ in res["items"]] == exact.ids
        assert res["certified"] and res["depth"] > FIRST_DEPTH


def test_one_unit_rule_everywhere():
    """Zero stays zero, an already unit vector is kept bit for bit, any other is divided by its norm however
    small. Failed before the one helper: the projection, centrality and diversity divided by max(norm, 1e-12),
    so a vector of norm 1e-14 came out with norm 0.01."""
    from lookalike.encoders.projection import ImageSpace
    from lookalike.evaluation.centrality import centrality_scores
    from lookalike.evaluation.diversity import intra_list_diversity
    from lookalike.retrieval.stores.base import check_queries

    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    x[1] = 0.0
    x[2] *= 1e-14 / np.linalg.norm(x[2])
    x[3] /= np.linalg.norm(x[3])
    u = unit(x)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), [1, 0, 1, 1], atol=1e-6)
    assert np.array_equal(u[3], x[3]) and np.array_equal(unit(u), u)  # idempotent, bit for bit
    assert unit(np.array([3, 4])).dtype == np.float32 and unit(x.astype(np.float64)).dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(ImageSpace("none").transform(x), axis=1), [1, 0, 1, 1], atol=1e-6)
    scores = centrality_scores(x[[0, 2, 3]])
    assert np.all(np.abs(scores) <= 1 + 1e-6) and abs(scores[1]) > 0.05  # the tiny vector is a direction too
    assert intra_list_diversity(x[[2, 2]]) == pytest.approx(0.0, abs=1e-6)  # two equal directions
    np.testing.assert_array_equal(check_queries(x[[0, 3]], 8, 1), unit(x[[0, 3]]))
    with pytest.raises(LookalikeError, match="all zeros"):
        check_queries(x[[1]], 8, 1)
