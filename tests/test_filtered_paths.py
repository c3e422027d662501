"""Filtered approximate search picks its path by measured cost (`stores/paths.py`), on both backends: the
exact path is exact, the index walk (pgvector's iterative scan; FAISS with a selector) returns k rows under a
selective filter, and a walk that runs out before k rows pass is ranked exactly instead."""

from __future__ import annotations

import numpy as np
import pytest
from store_servers import pg_url

from lookalike.retrieval.stores import StoreItem, embedded, open_store, pgvector
from lookalike.retrieval.stores.paths import EXACT, INDEX, INDEX_THEN_EXACT, PathCosts

DIM = 16
N = 2000
# Lines whose crossing is easy to work out: exact costs a row passing, the walk costs a unit of its work.
UNIT = PathCosts(exact_ms=0.0, exact_ms_per_row=1.0, index_ms=0.0, index_ms_per_unit=1.0)


CENTRES = np.random.default_rng(3).standard_normal((10, DIM))


def _items() -> list[StoreItem]:
    """Rows around 10 centres; `tag` passes 1%, 5% or 50% of rows independently of the vectors; `cluster` names a
    row's centre (a filter on it passes whole neighbourhoods); `far` passes the 20 rows of a cluster of their own,
    far from every query."""
    rng = np.random.default_rng(5)
    label = rng.integers(0, 10, N)
    x = CENTRES[label] + 0.3 * rng.standard_normal((N, DIM))
    x[-20:] = -CENTRES.mean(0) * 5 + 0.3 * rng.standard_normal((20, DIM))  # the far cluster
    u = rng.random(N)
    return [
        StoreItem(
            f"p{i:05d}",
            x[i].astype(np.float32),
            {
                "tag": [t for t, s in (("1%", 0.01), ("5%", 0.05), ("50%", 0.5)) if u[i] < s],
                "cluster": f"c{label[i]}",
                "far": i >= N - 20,
            },
        )
        for i in range(N)
    ]


@pytest.fixture(scope="module")
def data():
    items = _items()
    q = 0.3 * np.random.default_rng(4).standard_normal((12, DIM)).astype(np.float32)
    q += np.stack([items[i].vector for i in range(12)])  # queries near stored rows, none in the far cluster
    return items, q


@pytest.fixture(scope="module")
def pg(data):
    s = open_store(pg_url("paths") + "&ef_search=40", dim=DIM)
    s.upsert(data[0])
    s._conn().execute(f"ANALYZE {s._sql['t'].as_string(s._conn())}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def emb(data, tmp_path_factory):
    s = open_store(f"embedded://{tmp_path_factory.mktemp('paths')}/s?index=hnsw&m=16&ef_search=40", dim=DIM)
    s.upsert(data[0])
    yield s
    s.close()


def test_the_cheaper_line_wins_and_a_tie_goes_exact():
    c = PathCosts(exact_ms=1.0, exact_ms_per_row=0.01, index_ms=5.0, index_ms_per_unit=0.001)
    assert c.choose(rows=100, units=400) == EXACT  # 2 ms against 5.4
    assert c.choose(rows=1000, units=400) == INDEX  # 11 ms against 5.4
    assert c.choose(rows=440, units=400) == EXACT  # 5.4 against 5.4: same cost, and exact


@pytest.mark.parametrize("backend", [pytest.param("pg", marks=pytest.mark.slow), "emb"])
def test_filtered_search_takes_the_path_its_costs_say(backend, data, monkeypatch, request):
    """With the unit lines, pgvector crosses where rows = 10 × N / rows (k = 10: ~141 of 2000 rows) and the
    embedded store where rows = 40 × N / rows (~283): a 1% or 5% filter is ranked exactly, a 50% one walks
    the index; the exact path's answers equal exact search's, ties and scores included."""
    store = request.getfixturevalue(backend)
    monkeypatch.setattr(pgvector if backend == "pg" else embedded, "COSTS", UNIT)
    _, q = data
    for tag, path in (("1%", EXACT), ("5%", EXACT), ("50%", INDEX)):
        store.path_counts.clear()
        got = store.search(q, 10, {"tag": tag}, exact=False)
        assert dict(store.path_counts) == {path: len(q)}, tag
        if path == EXACT:
            assert got == store.search(q, 10, {"tag": tag}), tag
        else:  # approximate, but close: clustered data at this size
            truth = store.search(q, 10, {"tag": tag})
            assert np.mean([len({i for i, _ in a} & {i for i, _ in e}) for a, e in zip(got, truth)]) >= 8, tag
    # the other way round: lines on which the walk is always cheaper
    monkeypatch.setattr(pgvector if backend == "pg" else embedded, "COSTS", PathCosts(1e9, 1.0, 0.0, 0.0))
    store.path_counts.clear()
    store.search(q, 10, {"tag": "1%"}, exact=False)
    assert store.path_counts[EXACT] == 0


@pytest.mark.parametrize("backend", [pytest.param("pg", marks=pytest.mark.slow), "emb"])
def test_the_walk_returns_k_rows_under_a_selective_filter(backend, data, request):
    """The index forced on a filter passing ~1% of rows (pgvector: iterative scan, ef_search 40 < rows to hand
    up; FAISS: the widened beam): k rows, all passing, and no exact ranking needed to complete them."""
    store = request.getfixturevalue(backend)
    items, q = data
    tagged = {it.id for it in items if "5%" in it.metadata["tag"]}
    store.index_path = "always"
    store.path_counts.clear()
    try:
        got = store.search(q, 10, {"tag": "5%"}, exact=False)
    finally:
        store.index_path = "cost"
    assert dict(store.path_counts) == {INDEX: len(q)}
    assert all(len(h) == 10 and {i for i, _ in h} <= tagged for h in got)
    truth = store.search(q, 10, {"tag": "5%"})
    assert np.mean([len({i for i, _ in a} & {i for i, _ in e}) for a, e in zip(got, truth)]) >= 8


@pytest.mark.parametrize("backend", [pytest.param("pg", marks=pytest.mark.slow), "emb"])
def test_a_walk_that_runs_out_is_ranked_exactly(backend, data, request, monkeypatch):
    """The 20 `far` rows lie where no query's walk goes; with the walk's limits small (pgvector: one batch of
    ef_search 10, max_scan_tuples 1; FAISS: a 10-wide beam) it finds fewer than k of them, and those queries
    are ranked exactly: the answer equals exact search's."""
    store = request.getfixturevalue(backend)
    _, q = data
    if backend == "pg":
        monkeypatch.setattr(store, "ef_search", 10)
        store._conn().execute("SET hnsw.max_scan_tuples = 1")  # this connection's session, for this test
    else:
        monkeypatch.setattr(embedded, "BEAM_CAP", 10)
    store.index_path = "always"
    store.path_counts.clear()
    try:
        got = store.search(q, 10, {"far": True}, exact=False)
    finally:
        store.index_path = "cost"
        if backend == "pg":
            store._conn().execute("RESET hnsw.max_scan_tuples")
    assert store.path_counts[INDEX_THEN_EXACT] > 0, dict(store.path_counts)
    assert got == store.search(q, 10, {"far": True})


@pytest.mark.slow
def test_pgvector_estimates_come_from_the_planner(pg):
    """The choice sees the planner's estimates (statistics, nothing scanned): near the true counts here."""
    passing, total = pg._estimated_rows({"tag": ["50%"]})
    assert 700 <= passing <= 1300 and 1800 <= total <= 2200


@pytest.mark.slow
def test_pgvector_keeps_metadata_inline_beside_the_vector():
    """A 512-d row passes PostgreSQL's TOAST threshold with its vector alone (kept inline); the metadata must stay
    inline too, or every filter check on either path (the exact scan's rows, the walk's candidates) fetches it
    from the TOAST table: an index lookup and another page per row."""
    s = open_store(pg_url("inline"), dim=512)
    rng = np.random.default_rng(0)
    s.upsert(
        StoreItem(f"p{i}", rng.standard_normal(512), {"category": f"cat-{i % 7}", "is_new": i % 2 == 0, "tags": ["a"]})
        for i in range(50)
    )
    table = s._sql["t"].as_string(s._conn())
    toast = (
        s._conn()
        .execute("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = %s::regclass", (table,))
        .fetchone()[0]
    )
    s.close()
    assert toast == 0


@pytest.mark.slow
def test_pgvector_walk_spends_at_most_what_exact_would_cost(pg, data, monkeypatch):
    """With the unit lines, a filter passing one cluster (~200 rows) expects the walk to hand up ~100 rows
    (10 × 2000 / 200) against ~200 rows to rank exactly: the walk goes, with a budget of what the exact path
    would cost, ~200 rows handed up. Its queries lie in other clusters: the nearest 200 rows pass none of the
    filtered cluster, the walk stops there, and the rows are ranked exactly (the same answer as exact search).
    A walk that may run on would have handed up rows until it reached the cluster."""
    monkeypatch.setattr(pgvector, "COSTS", UNIT)
    pg.short_walks.clear()
    _, q = data
    own = {int(np.argmin(np.linalg.norm(CENTRES - v, axis=1))) for v in q}
    other = next(f"c{c}" for c in range(10) if c not in own)
    assert pg._plan({"cluster": [other]}, 10)[0] == INDEX
    assert 150 <= pg._plan({"cluster": [other]}, 10)[1] <= 260
    pg.path_counts.clear()
    got = pg.search(q, 10, {"cluster": other}, exact=False)
    assert pg.path_counts[INDEX_THEN_EXACT] == len(q), dict(pg.path_counts)
    assert got == pg.search(q, 10, {"cluster": other})
    # 12 walks of 12 ended short: the store now expects the next one to (12 / 13) and ranks this filter exactly
    pg.path_counts.clear()
    assert pg.search(q, 10, {"cluster": other}, exact=False) == got
    assert dict(pg.path_counts) == {EXACT: len(q)}
    # the budgeted walk keeps the filter and the excluded ids
    pg.path_counts.clear()
    first = pg.search(q[:1], 10, {"tag": "50%"}, exact=False)[0]
    again = pg.search(q[:1], 10, {"tag": "50%"}, exact=False, exclude_ids=[first[0][0]])[0]
    assert dict(pg.path_counts) == {INDEX: 2} and first[0][0] not in {i for i, _ in again} and len(again) == 10
    tagged = {it.id for it in data[0] if "50%" in it.metadata["tag"]}
    assert {i for i, _ in first + again} <= tagged


def test_short_walks_price_the_walk_with_their_share():
    """A filter none of whose walks ended short keeps its walk; one whose walks mostly did is ranked exactly: the
    walk's expected cost counts the exact ranking that follows a short walk (and what the walk spent first)."""
    from lookalike.retrieval.stores.paths import ShortWalks, filter_key

    c = PathCosts(exact_ms=0.0, exact_ms_per_row=0.001, index_ms=5.0, index_ms_per_unit=0.0)
    record, key = ShortWalks(size=2), filter_key({"brand": ["x"]})
    assert record.share(key) == 0 and c.choose(10_000, 400, record.share(key)) == INDEX  # 10 ms against 5
    record.add(key, 4, 0)
    assert c.choose(10_000, 400, record.share(key)) == INDEX
    record.add(key, 4, 4)  # 4 of 8 ended short: expected 4/9 × (5 + 10) + 5/9 × 5 = 9.4 ms against 10
    assert c.choose(10_000, 400, record.share(key)) == INDEX
    assert c.choose(10_000, 400, record.share(key), short_ms=10.0) == EXACT  # a walk on a budget of 10 ms: 11.7
    record.add(key, 8, 8)
    assert c.choose(10_000, 400, record.share(key)) == EXACT  # 12 of 16 (12 / 17 expected): 12.1 ms against 10
    assert filter_key({"a": [1, "1"], "b": [True]}) == filter_key({"b": [True], "a": ["1", 1]})
    record.add(filter_key({"a": ["1"]}), 1, 1)
    record.add(filter_key({"b": ["1"]}), 1, 1)  # two filters kept: the oldest is forgotten
    assert record.share(key) == 0
