"""Both store backends — embedded (directory) and PostgreSQL + pgvector — behave the same."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from store_servers import pg_url

from lookalike.errors import LookalikeError
from lookalike.retrieval.stores import StoreItem, open_store

pytestmark = pytest.mark.slow  # PostgreSQL

DIM = 32


def pg_table(store) -> str:
    return store._sql["t"].as_string(store._conn())


def _items(n: int, seed: int = 0, prefix: str = "p") -> list[StoreItem]:
    """Clustered vectors (like product images) with a few exact duplicates, so ties by id are exercised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, DIM))
    x = centres[rng.integers(0, 12, n)] + 0.35 * rng.standard_normal((n, DIM))
    if n > 7:
        x[5] = x[7]  # identical images under different ids
    return [
        StoreItem(
            f"{prefix}{i:04d}",
            x[i].astype(np.float32),
            {
                "category": ["shirts", "shoes", "bags"][i % 3],
                "is_new": i % 4 == 0,
                "year": 2010 + i % 8,
                "tags": ["summer", "sale"] if i % 5 == 0 else ["winter"],
            },
        )
        for i in range(n)
    ]


@pytest.fixture(params=["embedded", "pgvector"])
def store(request, tmp_path):
    s = open_store(f"embedded://{tmp_path}/store?index=hnsw" if request.param == "embedded" else pg_url(), dim=DIM)
    yield s
    s.close()


def test_both_backends_return_the_same_exact_topk(tmp_path):
    items = _items(400)
    emb = open_store(f"embedded://{tmp_path}/e", dim=DIM)
    pg = open_store(pg_url(), dim=DIM)
    emb.upsert(items)
    pg.upsert(items)
    q = np.stack([items[5].vector, *np.random.default_rng(1).standard_normal((6, DIM))])
    for filters in (
        None,
        {"category": "shoes"},
        {"is_new": True, "year": [2014, 2016]},
        {"tags": "summer"},
        {"year": 2011.0},
    ):
        for exclude in (None, ["p0003", "p0007"]):
            a = emb.search(q, 10, filters, exclude_ids=exclude)
            b = pg.search(q, 10, filters, exclude_ids=exclude)
            assert [[i for i, _ in r] for r in a] == [[i for i, _ in r] for r in b], (filters, exclude)
            np.testing.assert_allclose([[s for _, s in r] for r in a], [[s for _, s in r] for r in b], atol=1e-5)
            assert all(len(r) == 10 for r in a)
    # the duplicated vector: both copies score 1.0 and come back in id order
    assert [i for i, _ in emb.search(items[5].vector, 2)[0]] == ["p0005", "p0007"]
    # scores are cosines whatever the query's norm
    assert emb.search(3 * items[9].vector, 1)[0][0] == ("p0009", pytest.approx(1.0, abs=1e-5))


def test_filters_match_fields_and_lists_and_reject_unknown_fields(store):
    store.upsert(_items(60))
    q = np.ones((1, DIM), np.float32)
    hits = store.search(q, 60, {"category": ["shirts", "bags"], "is_new": True})[0]
    assert hits and all(int(i[1:]) % 3 != 1 and int(i[1:]) % 4 == 0 for i, _ in hits)
    assert len(hits) == sum(1 for n in range(60) if n % 3 != 1 and n % 4 == 0)
    assert {i for i, _ in store.search(q, 60, {"tags": "sale"})[0]} == {f"p{n:04d}" for n in range(0, 60, 5)}
    assert store.search(q, 5, {"is_new": 1})[0] == []  # JSON semantics: 1 is not true
    with pytest.raises(LookalikeError, match="unknown filter field 'colour'"):
        store.search(q, 5, {"colour": "red"})
    with pytest.raises(LookalikeError, match="filter 'year'"):
        store.search(q, 5, {"year": {"$gt": 2010}})
    with pytest.raises(LookalikeError, match="k must be a positive integer"):
        store.search(q, 0)
    with pytest.raises(LookalikeError, match=f"shape \\(n, {DIM}\\)"):
        store.search(np.ones((1, 3)), 5)


def test_filter_text_reaches_sql_only_as_a_parameter(store):
    store.upsert(_items(20))
    q = np.ones((1, DIM), np.float32)
    assert store.search(q, 5, {"category": "shoes' OR '1'='1"})[0] == []
    with pytest.raises(LookalikeError, match="unknown filter field"):
        store.search(q, 5, {"category') OR true; DROP TABLE lookalike_items; --": "x"})
    assert len(store) == 20


def test_upsert_is_idempotent_and_updates_in_place(store):
    items = _items(30)
    assert store.upsert(items) == 30
    before = store.search(items[0].vector, 5)
    store.upsert(items)
    assert len(store) == 30 and store.search(items[0].vector, 5) == before
    changed = StoreItem("p0001", items[0].vector, {"category": "hats"})
    store.upsert([changed, changed])  # a repeated id in one batch keeps one version
    got = store.get("p0001")
    assert got.metadata == {"category": "hats"}
    np.testing.assert_allclose(got.vector, items[0].vector / np.linalg.norm(items[0].vector), atol=1e-6)
    assert len(store) == 30 and store.search(items[0].vector, 2, {"category": "hats"})[0][0][0] == "p0001"
    assert store.get("nope") is None
    ids, vectors, metadata = store.items()
    store.upsert([StoreItem(i, v, {**m, "year": 1999}) for i, v, m in zip(ids, vectors, metadata)])
    assert np.array_equal(store.items()[1], vectors)  # a metadata edit keeps every stored vector bit for bit


def test_delete_removes_from_search_at_once(store):
    items = _items(30)
    store.upsert(items)
    assert store.search(items[4].vector, 1)[0][0][0] == "p0004"
    assert store.delete(["p0004", "missing"]) == 1
    assert "p0004" not in {i for i, _ in store.search(items[4].vector, 30)[0]}
    assert "p0004" not in {i for i, _ in store.search(items[4].vector, 30, exact=False)[0]}
    assert len(store) == 29 and store.get("p0004") is None and "p0004" not in store.ids()


def test_failed_upsert_writes_nothing(store):
    items = _items(10)
    store.upsert(items)
    bad = [*_items(5, seed=2, prefix="n"), StoreItem("bad", np.zeros(DIM))]
    with pytest.raises(LookalikeError, match="'bad': vector is zero"):
        store.upsert(bad)
    with pytest.raises(LookalikeError, match="metadata field 'x'"):
        store.upsert([StoreItem("n1", np.ones(DIM), {"x": {"nested": 1}})])
    with pytest.raises(LookalikeError, match="has 3 dimensions"):
        store.upsert([StoreItem("n1", np.ones(3))])
    assert sorted(store.ids()) == [it.id for it in items]


def test_database_error_mid_upsert_rolls_back_everything():
    pg = open_store(pg_url(), dim=DIM)
    pg.upsert(_items(5))
    import psycopg

    with pytest.raises(psycopg.Error):  # PostgreSQL refuses NUL in text: the whole batch must roll back
        pg.upsert([*_items(8, seed=3, prefix="n"), StoreItem("zz\x00", np.ones(DIM))])
    assert len(pg) == 5 and all(i.startswith("p") for i in pg.ids())


def test_interrupted_embedded_write_leaves_the_snapshot_as_it_was(tmp_path, monkeypatch):
    import os

    s = open_store(f"embedded://{tmp_path}/s", dim=DIM)
    s.upsert(_items(10))
    snap = (tmp_path / "s" / "store.npz").read_bytes()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # fault injection at the commit point
    with pytest.raises(OSError):
        s.upsert(_items(3, seed=4, prefix="n"))
    monkeypatch.undo()
    assert (tmp_path / "s" / "store.npz").read_bytes() == snap
    assert not list((tmp_path / "s").glob(".store-*"))
    assert len(open_store(f"embedded://{tmp_path}/s")) == 10 and len(s) == 10


def test_concurrent_upserts_lose_nothing(store):
    def writer(t: int) -> None:
        for b in range(4):
            store.upsert(_items(10, seed=t * 10 + b, prefix=f"t{t}b{b}-"))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(store) == 160 and len(set(store.ids())) == 160


def test_restart_serves_the_same_catalogue(tmp_path):
    items = _items(50)
    url_e, url_p = f"embedded://{tmp_path}/e", pg_url()
    for url in (url_e, url_p):
        s = open_store(url, dim=DIM)
        s.upsert(items)
        s.delete(["p0002"])
        before = s.search(items[3].vector, 10, {"category": "shoes"})
        s.close()
        again = open_store(url)  # dimension read back from the store
        assert again.dim == DIM and len(again) == 49
        assert again.search(items[3].vector, 10, {"category": "shoes"}) == before
        with pytest.raises(LookalikeError, match="holds 32-d vectors"):
            open_store(url, dim=64)


def test_embedded_store_sees_writes_from_another_handle(tmp_path):
    """A CLI process writing while the server reads the same directory."""
    a = open_store(f"embedded://{tmp_path}/s", dim=DIM)
    b = open_store(f"embedded://{tmp_path}/s")
    a.upsert(_items(5))
    assert len(b) == 5
    b.delete(["p0001"])
    assert a.get("p0001") is None


def test_hnsw_recall_against_exact(tmp_path, capsys):
    items = _items(1500, seed=5)
    q = np.random.default_rng(6).standard_normal((40, DIM)).astype(np.float32)
    emb = open_store(f"embedded://{tmp_path}/h?index=hnsw&m=16&ef_search=64", dim=DIM)
    pg = open_store(pg_url(), dim=DIM)
    pg.upsert(items[:400])
    emb.upsert(items)
    q_bags = emb.search(q, 10, {"category": "bags"}, exact=False)  # 500 rows pass: scanned exactly
    assert q_bags == emb.search(q, 10, {"category": "bags"})
    # a filter the planner expects to pass few rows is ranked exactly (about a third of the 400 rows are bags;
    # the estimate comes from the statistics autovacuum and `load` keep)
    pg._conn().execute(f"ANALYZE {pg_table(pg)}")
    assert 60 <= pg._estimated_rows({"category": ["bags"]})[0] <= 270
    assert pg.search(q, 10, {"category": "bags"}, exact=False) == pg.search(q, 10, {"category": "bags"})
    emb.index_path = pg.index_path = "always"  # now the filtered search walks the graph, on both backends
    for name, s, flt in (
        ("embedded", emb, None),
        ("embedded+filter", emb, {"category": "bags"}),
        ("pgvector", pg, None),
        ("pgvector+filter", pg, {"category": "bags"}),
    ):
        exact = s.search(q, 10, flt)
        approx = s.search(q, 10, flt, exact=False)
        recall = np.mean([len({i for i, _ in a} & {i for i, _ in e}) / len(e) for a, e in zip(approx, exact)])
        with capsys.disabled():
            print(f"\nHNSW recall@10 vs exact, {name}: {recall:.3f}")
        assert recall >= 0.9, name
    # the graph is saved and reused after a restart, and rebuilt after a write
    assert len(list((tmp_path / "h").glob("hnsw-*.faiss"))) == 1
    emb.delete(["p0000"])
    assert not list((tmp_path / "h").glob("hnsw-*.faiss"))


def test_store_urls_are_checked(tmp_path):
    with pytest.raises(LookalikeError, match="unknown store URL scheme 'redis'"):
        open_store("redis://x")
    with pytest.raises(LookalikeError, match=r"unknown store option\(s\) \['indx'\]"):
        open_store(f"embedded://{tmp_path}/x?indx=hnsw", dim=4)
    with pytest.raises(LookalikeError, match="give the vector dimension"):
        open_store(f"embedded://{tmp_path}/empty")
    with pytest.raises(LookalikeError, match="table name"):
        open_store(pg_url().split("?")[0] + "?table=Robert'); DROP", dim=4)
    assert open_store(str(tmp_path / "plain"), dim=4).dim == 4


def test_pgvector_bulk_upsert_rebuilds_the_index_in_its_transaction(monkeypatch):
    import psycopg

    from lookalike.retrieval.stores import pgvector

    monkeypatch.setattr(pgvector, "BULK", 100)  # the bulk path, at test size
    url = pg_url("bulk")
    pg = open_store(url, dim=DIM)
    items = _items(300, seed=8)
    pg.upsert(items[:150])
    table = url.rsplit("table=", 1)[1]

    def has_index() -> bool:
        return (
            pg._conn().execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (f"{table}_hnsw",)).fetchone()[0]
            == 1
        )

    assert has_index()
    with pytest.raises(psycopg.Error):
        pg.upsert([*items[150:], StoreItem("zz\x00", np.ones(DIM))])
    assert has_index() and len(pg) == 150  # the failed bulk load dropped nothing, added nothing
    q = np.stack([it.vector for it in items[:20]])
    exact, approx = pg.search(q, 5), pg.search(q, 5, exact=False)
    assert np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 5 for a, e in zip(approx, exact)]) >= 0.9


def test_long_ties_are_cut_by_id_on_both_backends(tmp_path):
    """30 identical vectors tie at the k-th score far past the scan's margin: the cut is still by id."""
    items = _items(60, seed=9)
    for it in items[10:40]:
        it.vector = items[10].vector
    want = [it.id for it in items[10:40]]
    emb, pg = open_store(f"embedded://{tmp_path}/e", dim=DIM), open_store(pg_url(), dim=DIM)
    for s in (emb, pg):
        s.upsert(items)
        assert [i for i, _ in s.search(items[10].vector, 5)[0]] == want[:5]
        assert [i for i, _ in s.search(items[10].vector, 5, exclude_ids=want[:2])[0]] == want[2:7]
        batch = s.search(np.stack([items[10].vector] * 10), 3)  # the batched path
        assert all([i for i, _ in r] == want[:3] for r in batch)


def test_bulk_load_keeps_whole_batches_and_a_rerun_completes_it(tmp_path, monkeypatch):
    """A load killed between batches: pgvector keeps the committed batches (index rebuilt on the next open),
    the embedded store keeps nothing; rerunning the same load gives what one clean upsert gives."""
    from lookalike.retrieval.stores import pgvector

    monkeypatch.setattr(pgvector, "BULK", 50)  # the deferred-index path, at test size
    items = _items(120, seed=11)

    def batches(stop_at: int | None = None):
        for b in range(0, len(items), 30):
            if stop_at is not None and b >= stop_at:
                raise KeyboardInterrupt("killed")
            yield items[b : b + 30]

    pg_table = pg_url("load")
    for url, kept in ((f"embedded://{tmp_path}/e", 0), (pg_table, 60)):
        s = open_store(url, dim=DIM)
        with pytest.raises(KeyboardInterrupt):
            s.load(batches(stop_at=60), total=len(items))
        s.close()
        s = open_store(url)
        assert len(s) == kept and all(s.get(it.id) is not None for it in items[:kept])
        assert s.load(batches(), total=len(items)) == 120
        ref = open_store(f"embedded://{tmp_path}/ref-{kept}", dim=DIM)
        ref.upsert(items)
        q = np.stack([it.vector for it in items[:15]])
        got, want = s.search(q, 10), ref.search(q, 10)
        assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in want]
        np.testing.assert_allclose([[x for _, x in r] for r in got], [[x for _, x in r] for r in want], atol=1e-5)
        assert [s.get(i).metadata for i in s.ids()] == [it.metadata for it in items]
    pg = open_store(pg_table)
    table = pg_table.rsplit("table=", 1)[1]
    assert (
        pg._conn().execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (f"{table}_hnsw",)).fetchone()[0]
        == 1
    )
    exact, approx = pg.search(q, 5), pg.search(q, 5, exact=False)
    assert np.mean([len({i for i, _ in a} & {i for i, _ in e}) / 5 for a, e in zip(approx, exact)]) >= 0.9


def test_version_moves_with_every_write_from_any_handle(tmp_path):
    """Whole-catalogue caches (snapshot, centrality) in one API worker key on it, so another worker's write
    must move it, and a write that failed must not."""
    for url in (f"embedded://{tmp_path}/v", pg_url("ver")):
        a = open_store(url, dim=DIM)
        b = open_store(url)  # a second worker's handle
        v0 = b.version()
        a.upsert(_items(5))
        v1 = b.version()
        assert v1 != v0
        with pytest.raises(LookalikeError):
            a.upsert([StoreItem("bad", np.zeros(DIM))])
        assert b.version() == v1
        a.upsert([StoreItem("p0001", np.ones(DIM), {"category": "hats"})])  # same size, new contents
        v2 = b.version()
        assert v2 != v1 and len(b) == 5
        assert a.delete(["missing"]) == 0 and b.version() == v2
        a.delete(["p0001"])
        assert b.version() != v2


def test_unreachable_database_fails_in_one_line_naming_it():
    with pytest.raises(LookalikeError) as e:
        open_store("postgresql://someone:hunter2@127.0.0.1:1/catalogue", dim=DIM)
    msg = str(e.value)
    assert "\n" not in msg and "127.0.0.1:1/catalogue" in msg and "refused" in msg and "hunter2" not in msg
