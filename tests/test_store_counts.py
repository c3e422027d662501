"""The counts both store backends keep in each write's own transaction: exact after every kind of write,
across two handles on one store, untouched by a failed write, and declared once for good."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from store_servers import pg_url

from lookalike.errors import LookalikeError
from lookalike.retrieval.stores import StoreItem, open_store
from lookalike.retrieval.stores.base import count_key

DIM = 16
FIELDS = ["category", "colour"]


def items(n: int, seed: int = 0, prefix: str = "p", year: int = 2014) -> list[StoreItem]:
    rng = np.random.default_rng(seed)
    return [
        StoreItem(
            f"{prefix}{i:04d}",
            rng.standard_normal(DIM).astype(np.float32),
            {
                "category": ["shirts", "shoes", "bags"][(i + seed) % 3],
                **({"colour": ["red", "blue"][i % 2]} if i % 5 else {}),  # some items lack the field
                "is_new": (i + seed) % 4 == 0,
                "year": year,
            },
        )
        for i in range(n)
    ]


def recount(store) -> dict:
    """What the counts must say, from every stored row."""
    _, _, metadata = store.items()
    out: dict = {"size": len(metadata), "flagged": sum(m.get("is_new") is True for m in metadata)}
    for f in FIELDS:
        vals: dict = {}
        for m in metadata:
            c = vals.setdefault(count_key(m.get(f)), [0, 0])
            c[0] += 1
            c[1] += m.get("is_new") is True
        out[f] = {v: tuple(c) for v, c in vals.items()}
    return out


def kept(store) -> dict:
    c = store.counts()
    assert c.version == store.version() and len(store) == c.size
    return {"size": c.size, "flagged": c.flagged, **{f: c.fields[f] for f in FIELDS}}


def url_for(kind: str, tmp_path) -> str:
    return f"embedded://{tmp_path}/store" if kind == "embedded" else pg_url("counts")


@pytest.fixture(params=["embedded", pytest.param("pgvector", marks=pytest.mark.slow)])
def kind(request) -> str:
    return request.param


def test_counts_stay_exact_through_add_update_delete_and_load(kind, tmp_path):
    store = open_store(url_for(kind, tmp_path), dim=DIM)
    assert store.counts().size == 0 and store.counts().fields == {}
    store.count_by(FIELDS, flag="is_new")
    assert kept(store) == recount(store) == {"size": 0, "flagged": 0, "category": {}, "colour": {}}
    store.upsert(items(40))
    assert kept(store) == recount(store) and store.counts().size == 40
    # an update that moves items between categories and in or out of the new collection, with a repeated id
    changed = items(10, seed=1)
    store.upsert([*changed, changed[3]])
    assert kept(store) == recount(store) and store.counts().size == 40
    assert store.delete(["p0001", "p0002", "missing"]) == 2
    assert kept(store) == recount(store) and store.counts().size == 38
    # a bulk load whose batches repeat ids among themselves and with the stored rows
    store.load([items(30, seed=2, prefix="q"), items(20, seed=3, prefix="q"), items(5, seed=4)], total=55)
    assert kept(store) == recount(store) and store.counts().size == 38 + 30 + 2  # p0001, p0002 back
    c = store.counts()
    by_count = sorted(((v, n[0]) for v, n in c.fields["category"].items()), key=lambda vn: (-vn[1], vn[0]))
    assert list(c.per_value("category").items()) == by_count
    assert sum(c.per_value("colour", flagged=True).values()) == c.flagged
    store.delete(store.ids())
    assert kept(store) == recount(store) == {"size": 0, "flagged": 0, "category": {}, "colour": {}}
    store.close()


def test_two_handles_on_one_store_see_each_others_counts(kind, tmp_path):
    url = url_for(kind, tmp_path)
    a = open_store(url, dim=DIM)
    a.count_by(FIELDS, flag="is_new")
    b = open_store(url)
    a.upsert(items(30))
    assert kept(b) == recount(b) == kept(a)
    b.upsert(items(12, seed=5))
    b.delete(["p0007"])
    assert kept(a) == recount(a) == kept(b)

    # concurrent writers (the two handles and a third), updating the same ids: each must read the counts the
    # others committed, or one write's change is lost
    c = open_store(url)
    errors: list[BaseException] = []

    def write(store, seed):
        try:
            for r in range(5):
                store.upsert(items(15, seed=seed + r))
                store.delete([f"p{(seed + r) % 15:04d}"])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(s, seed)) for s, seed in ((a, 10), (b, 20), (c, 30))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and kept(a) == recount(a) == kept(b) == kept(c)
    c.close()
    a.close()
    b.close()


def test_a_failed_write_leaves_the_counts_as_they_were(kind, tmp_path, monkeypatch):
    url = url_for(kind, tmp_path)
    store = open_store(url, dim=DIM)
    store.count_by(FIELDS, flag="is_new")
    store.upsert(items(20))
    before, version = kept(store), store.version()
    with pytest.raises(LookalikeError, match="vector is zero"):
        store.upsert([*items(5, seed=1), StoreItem("bad", np.zeros(DIM))])
    if kind == "pgvector":
        import psycopg

        with pytest.raises(
            psycopg.Error
        ):  # PostgreSQL refuses NUL in text, after the counts changed in the transaction
            store.upsert([*items(8, seed=3), StoreItem("zz\x00", np.ones(DIM))])
    else:
        import lookalike.retrieval.stores.embedded as embedded

        def disk_full(*a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(embedded.np, "savez", disk_full)  # the snapshot write fails after the counts changed
        with pytest.raises(OSError):
            store.upsert(items(8, seed=3))
        with pytest.raises(OSError):
            store.delete(["p0000"])
        monkeypatch.undo()
    assert kept(store) == before == recount(store) and store.version() == version
    assert kept(open_store(url)) == before  # what is on disk


def test_declaring_counts_recounts_once_and_adds_up(kind, tmp_path):
    url = url_for(kind, tmp_path)
    store = open_store(url, dim=DIM)
    store.upsert(items(25))
    assert store.counts().size == 25 and store.counts().fields == {} and store.counts().flag is None
    c = store.count_by(["category"], flag="is_new")  # a filled store: one recount
    assert c.flagged == recount(store)["flagged"] and c.fields["category"] == recount(store)["category"]
    v = store.version()
    assert store.count_by(["category"], flag="is_new") == c and store.version() == v  # declared: nothing to do
    assert store.count_by([]).fields.keys() == {"category"}  # declarations add up
    store.count_by(["colour"])
    assert kept(store) == recount(store)
    with pytest.raises(LookalikeError, match="counts items flagged by 'is_new'"):
        store.count_by([], flag="featured")
    with pytest.raises(LookalikeError, match="does not count field 'year'"):
        store.counts().per_value("year")
    assert kept(open_store(url)) == recount(store)  # the declaration is saved with the store


def test_a_store_written_before_it_kept_counts_is_counted_at_open(kind, tmp_path):
    url = url_for(kind, tmp_path)
    store = open_store(url, dim=DIM)
    store.upsert(items(12))
    if kind == "pgvector":  # the table as an earlier version left it: no counts column
        from psycopg import sql

        store._conn().execute(sql.SQL("ALTER TABLE {} DROP COLUMN counts").format(store._sql["version"]))
        store.close()
        old = open_store(url)
    else:  # the snapshot as an earlier version wrote it: no counts member
        f = tmp_path / "store" / "store.npz"
        with np.load(f) as z:
            members = {k: z[k] for k in z.files if k != "counts"}
        np.savez(f, **members)
        store.close()
        old = open_store(url)
    assert old.counts().size == 12 and len(old) == 12
    old.count_by(FIELDS, flag="is_new")
    old.upsert(items(3, seed=7, prefix="n"))
    assert kept(old) == recount(old)


def test_a_filter_on_an_empty_store_says_it_is_empty(kind, tmp_path):
    store = open_store(url_for(kind, tmp_path), dim=DIM)
    with pytest.raises(LookalikeError, match="the store holds no item yet"):
        store.search(np.ones(DIM), 5, {"is_new": True})
