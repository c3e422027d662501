"""S2's serving path: the store's ANN candidates → the list-wise reranker → the top-k (`serve --reranker`), and the
128-d adapter as the stored vector (`catalog ingest --adapter`), with real files trained by the CLI on the tiny
service model, on the embedded store and on PostgreSQL + pgvector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import make_app, trained
from store_servers import pg_url

from lookalike.cli import main
from lookalike.errors import LookalikeError
from lookalike.retrieval import ranking
from lookalike.retrieval.rerank.listwise import load_reranker, rerank_list
from lookalike.retrieval.stores import open_store
from lookalike.towers.adapter import load_adapter

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

QUERY = {"gender": "Men", "masterCategory": "Apparel"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A reranker and two adapters, trained by the CLI on the tiny model's split (real files, tiny budgets)."""
    t, d = trained(), tmp_path_factory.mktemp("s2")
    out = {"reranker": d / "R.pt", "adapter": d / "A.pt", "other": d / "B.pt"}
    main(["train-reranker", "--model", t["checkpoint"], "--out", str(out["reranker"]), "--steps", "20"])
    main(["train-adapter", "--model", t["checkpoint"], "--out", str(out["adapter"]), "--epochs", "2"])
    main(["train-adapter", "--model", t["checkpoint"], "--out", str(out["other"]), "--epochs", "1", "--seed", "7"])
    return {k: str(v) for k, v in out.items()}


def _ingest_with(store: str, adapter: str | None) -> None:
    t = trained()
    args = ["catalog", "ingest", "--model", t["checkpoint"], "--store", store, "--catalog", str(t["catalog"])]
    main([*args, "--no-progress", *(["--adapter", adapter] if adapter else [])])


def _search(client: TestClient, k: int = 10) -> dict:
    r = client.post("/api/search", data={"attributes": json.dumps(QUERY), "k": str(k)})
    assert r.status_code == 200, r.text
    return r.json()


def test_files_are_refused_with_one_line_naming_them(tmp_path, files):
    with pytest.raises(LookalikeError, match=r"not found: .*nope\.pt"):
        load_reranker(tmp_path / "nope.pt")
    with pytest.raises(LookalikeError, match=f"{files['adapter']} is not a list-wise reranker file"):
        load_reranker(files["adapter"])
    with pytest.raises(LookalikeError, match=f"{files['reranker']} is not an adapter file"):
        load_adapter(files["reranker"])
    store = f"embedded://{tmp_path / 'store'}?index=hnsw"
    with pytest.raises(LookalikeError, match=r"reranker model file not found: .*missing\.pt"):
        make_app(store, tmp_path, reranker="listwise", reranker_model=str(tmp_path / "missing.pt"))


def test_reranker_orders_the_ann_candidates_and_the_api_and_cli_agree(tmp_path, files, capsys):
    store = f"embedded://{tmp_path / 'store'}?index=hnsw"
    _ingest_with(store, None)
    plain = TestClient(make_app(store, tmp_path / "a", search="approximate"))
    base = _search(plain)
    assert base["ranking"]["reranker"] is None and base["ranking"]["search"] == "approximate"
    app = make_app(store, tmp_path / "b", search="approximate", reranker="listwise", reranker_model=files["reranker"])
    got = _search(TestClient(app))
    assert got["ranking"]["reranker"] == "listwise"
    ids = [it["id"] for it in got["items"]]
    # the same list by hand: the first stage's top-100 (of the 121 products), reordered by the reranker
    svc = app.state.service
    q, _, _ = svc.enc.attributes(QUERY)
    first = ranking.rank(q, svc.rec.gallery(svc.enc.hub_bias), 100, corrected=True)[0]
    assert first.reranker is None and len(first.ids) == 100 and first.depth == len(svc.store)
    order = rerank_list(load_reranker(files["reranker"]), first.vectors, first.scores, 10)
    assert ids == [first.ids[j] for j in order]
    assert ids != [it["id"] for it in base["items"]]  # the reranker changed the list
    assert set(ids) <= set(first.ids)
    # a request asking for MMR diversity is diversified by MMR instead
    r = TestClient(app).post("/api/search", data={"attributes": json.dumps(QUERY), "diversity": "0.3"})
    assert r.json()["ranking"]["reranker"] is None
    # the CLI's search (an in-memory gallery of the catalogue) gives the same list through the same `rank`
    t = trained()
    capsys.readouterr()
    main(
        [
            "search",
            "--model",
            t["checkpoint"],
            "--catalog",
            str(t["catalog"]),
            "--json",
            json.dumps(QUERY),
            "--format",
            "json",
            "--reranker",
            "listwise",
            "--reranker-model",
            files["reranker"],
            "--no-progress",
        ]
    )
    assert [h["id"] for h in json.loads(capsys.readouterr().out)] == ids


def test_customer_input_is_reranked_when_the_reranker_is_on(tmp_path, files):
    store = f"embedded://{tmp_path / 'store'}?index=hnsw"
    _ingest_with(store, None)
    pid = trained()["rows"][0]["id"]
    body = {"history": [{"product_id": pid}], "profile": "mean", "k": 5}
    on = make_app(store, tmp_path / "b", search="approximate", reranker="listwise", reranker_model=files["reranker"])
    r = TestClient(on).post("/api/recommend/customer_input", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["ranking"]["reranker"] == "listwise"
    off = TestClient(make_app(store, tmp_path / "a", search="approximate"))
    assert off.post("/api/recommend/customer_input", json=body).json()["ranking"]["reranker"] is None


def _adapter_store_checks(store: str, plain_store: str, tmp_path: Path, files: dict, capsys) -> None:
    _ingest_with(store, files["adapter"])
    _ingest_with(plain_store, None)
    adapter, _ = load_adapter(files["adapter"])
    s, p = open_store(store), open_store(plain_store)
    assert s.dim == adapter.out_dim == 128 and p.dim != 128
    assert s.recorded_space() == f"adapter:{adapter.fingerprint()}" and p.recorded_space() == ""
    ids, plain_vectors, _ = p.items()
    stored = np.stack([it.vector for it in s.get_many(ids)])
    np.testing.assert_allclose(stored, adapter.encode(plain_vectors), atol=1e-5)  # the adapter's output is stored
    # served with the adapter: queries are mapped by it, and the list is the adapted space's exact ranking
    app = make_app(store, tmp_path / "a", adapter=files["adapter"])
    with TestClient(app) as client:  # closed at the end: its statistics thread stops before the database may
        got = _search(client)
        assert got["ranking"]["space"] == f"adapter:{adapter.fingerprint()}"
        svc = app.state.service
        q, _, _ = svc.enc.attributes(QUERY)
        assert q.shape == (128,)
        want = ranking.rank(q, svc.rec.gallery(svc.enc.hub_bias), 10, corrected=True)[0]
        assert [it["id"] for it in got["items"]] == want.ids
    # a query side in another space is refused, naming the store and both spaces
    with pytest.raises(LookalikeError, match=r"holds vectors of the space of adapter .* but the model's own space"):
        make_app(store, tmp_path / "b")
    with pytest.raises(LookalikeError, match=r"holds vectors of the space of adapter .* but the space of adapter"):
        make_app(store, tmp_path / "c", adapter=files["other"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        _ingest_with(plain_store, files["adapter"])
    err = capsys.readouterr().err
    assert "holds vectors of the model's own space (no adapter), but the space of adapter" in err
    assert err.count("\n") == 1  # one line
    with pytest.raises(SystemExit):
        _ingest_with(store, None)
    assert "holds vectors of the space of adapter" in capsys.readouterr().err
    assert len(open_store(store)) == len(ids)  # nothing was written by the refused ingest


def test_adapter_is_the_stored_vector_embedded(tmp_path, files, capsys):
    _adapter_store_checks(f"embedded://{tmp_path / 'a'}", f"embedded://{tmp_path / 'p'}", tmp_path, files, capsys)


def test_adapter_is_the_stored_vector_pgvector(tmp_path, files, capsys):
    _adapter_store_checks(pg_url("adapted"), pg_url("plain"), tmp_path, files, capsys)


def test_experiment_variants_choose_the_reranker_and_the_compact_space(tmp_path, files):
    plain, compact = f"embedded://{tmp_path / 'p'}?index=hnsw", f"embedded://{tmp_path / 'c'}?index=hnsw"
    _ingest_with(plain, None)
    _ingest_with(compact, files["adapter"])
    variants = [
        {"name": "control", "share": 0.34, "reranker": False},
        {"name": "rerank", "share": 0.33, "reranker": True},
        {"name": "compact", "share": 0.33, "reranker": False, "adapter": files["adapter"], "store": compact},
    ]
    exp = tmp_path / "exp.json"
    exp.write_text(json.dumps({"name": "s2", "variants": variants}))
    s2 = {"search": "approximate", "reranker": "listwise", "reranker_model": files["reranker"]}
    app = make_app(plain, tmp_path / "x", experiment=str(exp), **s2)
    experiment = app.state.service.experiment
    customer = {}
    for n in range(200):
        customer.setdefault(experiment.assign(f"cust{n}").name, f"cust{n}")
    rows = trained()["rows"]
    history = [{"product_id": rows[1]["id"]}, {"product_id": rows[7]["id"]}]

    def ask(client: TestClient, who: str) -> dict:
        body = {"history": history, "customer_id": who, "profile": "mean", "k": 5}
        r = client.post("/api/recommend/customer_input", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def ids(j: dict) -> list[str]:
        return [it["id"] for it in j["items"]]

    off = ask(TestClient(make_app(plain, tmp_path / "off", search="approximate")), "anyone")
    on = ask(TestClient(make_app(plain, tmp_path / "on", **s2)), "anyone")
    small = ask(TestClient(make_app(compact, tmp_path / "small", search="approximate", adapter=files["adapter"])), "x")
    assert ids(on) != ids(off)  # the reranker changes this customer's list
    with TestClient(app) as client:
        got = {name: ask(client, who) for name, who in customer.items()}
        assert {name: j["variant"] for name, j in got.items()} == {n: f"s2:{n}" for n in customer}
        assert ids(got["rerank"]) == ids(on) and got["rerank"]["ranking"]["reranker"] == "listwise"
        assert ids(got["control"]) == ids(off) and got["control"]["ranking"]["reranker"] is None
        assert ids(got["compact"]) == ids(small) and got["compact"]["ranking"]["space"].startswith("adapter:")
        assert got["compact"]["ranking"]["reranker"] is None
        # a catalogue write over the API reaches the compact variant's store too
        gone = ids(got["compact"])[0]
        assert client.delete(f"/api/items/{gone}").status_code == 200
        assert app.state.service.compact["compact"].store.get(gone) is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "s2", "variants": variants}))
    with pytest.raises(LookalikeError, match="turns the reranker on"):
        make_app(plain, tmp_path / "y", experiment=str(bad))
