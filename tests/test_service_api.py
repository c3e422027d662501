"""The HTTP API on a real trained checkpoint, real images and both store backends, in one process and as
`lookalike serve --workers 2` on one pgvector store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_fixtures import ingest, make_app, trained
from store_servers import pg_url, pgdata

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    url = f"embedded://{tmp}/store"
    ingest(url)
    rows = trained()["rows"]
    new = [r["id"] for r in rows if int(r["year"]) >= 2016]
    old = [r["id"] for r in rows if int(r["year"]) < 2016]
    client = TestClient(make_app(url, tmp, max_upload_mb=0.05))
    return {"client": client, "url": url, "tmp": tmp, "new": new, "old": old, "rows": {r["id"]: r for r in rows}}


def image_bytes(pid: str) -> bytes:
    return (trained()["catalog"] / "images" / f"{pid}.jpg").read_bytes()


def test_customer_input_by_product_returns_new_products_only(env):
    c, pid = env["client"], env["old"][0]
    body = c.post("/api/recommend/customer_input", data={"product_id": pid, "k": 5}).json()
    items = body["items"]
    assert len(items) == 5 and pid not in [h["id"] for h in items]
    assert all(h["attributes"]["is_new"] and int(env["rows"][h["id"]]["year"]) >= 2016 for h in items)
    scores = [h["score"] for h in items]
    assert scores == sorted(scores, reverse=True)
    cat = env["rows"][items[0]["id"]]["masterCategory"]
    filtered = c.post(
        "/api/recommend/customer_input",
        data={"product_id": pid, "k": 5, "filters": json.dumps({"masterCategory": cat})},
    ).json()
    assert filtered["items"] and all(h["attributes"]["masterCategory"] == cat for h in filtered["items"])
    assert c.get(items[0]["image_url"]).headers["content-type"] == "image/jpeg"


def test_diversity_reranking_raises_intra_list_diversity(env):
    from lookalike.retrieval.stores import open_store

    c, pid = env["client"], env["old"][1]
    plain = c.post("/api/recommend/customer_input", data={"product_id": pid, "k": 6}).json()
    diverse = c.post("/api/recommend/customer_input", data={"product_id": pid, "k": 6, "diversity": 0.7}).json()
    p_ids, d_ids = [h["id"] for h in plain["items"]], [h["id"] for h in diverse["items"]]
    assert d_ids[0] == p_ids[0]  # MMR keeps the most relevant first
    assert d_ids != p_ids and diverse["intra_list_diversity"] > plain["intra_list_diversity"]
    vec = {it.id: it.vector / np.linalg.norm(it.vector) for it in open_store(env["url"]).get_many(p_ids + d_ids)}

    def ild(ids: list[str]) -> float:
        x = np.stack([vec[i] for i in ids])
        return float(1 - (x @ x.T)[np.triu_indices(len(ids), 1)].mean())

    assert ild(p_ids) == pytest.approx(plain["intra_list_diversity"], abs=1e-4)
    assert ild(d_ids) == pytest.approx(diverse["intra_list_diversity"], abs=1e-4)
    # Greedy MMR with λ = 1 − diversity: each pick scores at least as high as every later pick would have scored in
    # its place, given the picks before it (λ·relevance − (1 − λ)·the highest cosine to an earlier pick).
    lam, rel = 0.3, {h["id"]: h["score"] for h in diverse["items"]}
    for t in range(1, len(d_ids)):

        def gain(j: str, t: int = t) -> float:
            return lam * rel[j] - (1 - lam) * max(float(vec[j] @ vec[i]) for i in d_ids[:t])

        assert all(gain(d_ids[t]) >= gain(u) - 1e-5 for u in d_ids[t + 1 :]), (t, d_ids)


def test_customer_input_by_uploaded_photo_finds_that_product(env):
    pid = env["new"][0]
    body = (
        env["client"]
        .post(
            "/api/recommend/customer_input",
            files={"image": ("photo.jpg", image_bytes(pid), "image/jpeg")},
            data={"k": 3},
        )
        .json()
    )
    assert body["items"][0]["id"] == pid and body["items"][0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "data,files,status,message",
    [
        ({"product_id": "no-such"}, None, 404, "unknown product id 'no-such'"),
        ({}, None, 400, "give a history"),
        ({"product_id": "X", "k": 0}, None, 422, "k"),
        ({"product_id": "X", "k": 101}, None, 422, "k"),
        ({"product_id": "{old}", "filters": "{bad json"}, None, 400, "filters is not valid JSON"),
        ({"product_id": "{old}", "filters": '{"colour": "Red"}'}, None, 400, "unknown filter field 'colour'"),
        ({"product_id": "{old}", "filters": '["Red"]'}, None, 400, "filters must be a JSON object"),
        ({}, {"image": ("notes.txt", b"just text", "text/plain")}, 400, "not a readable image"),
        ({}, {"image": ("cut.jpg", "TRUNCATED", "image/jpeg")}, 400, "not a readable image"),
        ({}, {"image": ("big.png", "BIG", "image/png")}, 413, "larger than the 0.05 MB limit"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem(env, data, files, status, message):
    data = {k: str(v).replace("{old}", env["old"][0]) for k, v in data.items()}
    if files:
        name, payload, ctype = files["image"]
        if payload == "TRUNCATED":
            payload = image_bytes(env["new"][0])[:300]
        elif payload == "BIG":
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(buf, "PNG")
            payload = buf.getvalue()
        files = {"image": (name, payload, ctype)}
    r = env["client"].post("/api/recommend/customer_input", data=data, files=files)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json())


def test_a_body_announced_too_large_is_refused_before_reading(env):
    big = b"x" * (9 * int(0.05 * 1024 * 1024) + 1024 * 1024)
    r = env["client"].post("/api/recommend/customer_input", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "exceeds the" in r.json()["detail"]


def test_top10_to_new_centrality_proxy_and_trends(env):
    body = env["client"].post("/api/recommend/top10_to_new", data={"k": 4, "limit": 5}).json()
    assert body["basis"].startswith("centrality proxy")
    sellers = body["best_sellers"]
    assert 1 <= len(sellers) <= 5 and all(s["source"] == "centrality" for s in sellers)
    assert all(s["id"] in env["old"] for s in sellers)  # best sellers come from the established catalogue
    cent = [s["centrality"] for s in sellers]
    assert cent == sorted(cent, reverse=True)
    assert all(len(s["items"]) == 4 and all(h["id"] in env["new"] for h in s["items"]) for s in sellers)
    matched = {h["id"] for s in sellers for h in s["items"]}
    assert {m["id"] for m in body["merged"]} == matched
    trend = body["trend"]
    assert trend["n_matches"] == len(matched) and trend["new_collection_size"] == len(env["new"])
    assert sum(v["count"] for v in trend["category_mix"]["values"]) == len(matched)
    assert trend["colour_mix"]["field"] == "baseColour"
    assert sum(trend["similarity"]["histogram"]["counts"]) == 4 * len(sellers)


def test_top10_to_new_from_a_sales_csv(env):
    old = env["old"][:10]
    csv_text = "id,units\n" + "\n".join(f"{pid},{(i * 37) % 11}" for i, pid in enumerate(old))
    best = max(old, key=lambda p: ((old.index(p) * 37) % 11, p))
    body = (
        env["client"]
        .post(
            "/api/recommend/top10_to_new",
            data={"k": 3, "fraction": 0.2},
            files={"sales_csv": ("sales.csv", csv_text.encode(), "text/csv")},
        )
        .json()
    )
    assert next(s["id"] for s in body["best_sellers"]) == best and len(body["best_sellers"]) == 2
    assert body["best_sellers"][0]["units"] == max((i * 37) % 11 for i in range(10))
    bad = env["client"].post(
        "/api/recommend/top10_to_new", files={"sales_csv": ("s.csv", b"id,units\nX1,many\n", "text/csv")}
    )
    assert bad.status_code == 400 and "line 2: units value 'many' is not a number" in bad.json()["detail"]
    unknown = env["client"].post("/api/recommend/top10_to_new", data={"sales": '{"nope": 3}'})
    assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]


def test_top10_to_new_from_ids_and_images(env):
    c = env["client"]
    by_ids = c.post("/api/recommend/top10_to_new", data={"product_ids": ",".join(env["old"][:2]), "k": 2}).json()
    assert [s["id"] for s in by_ids["best_sellers"]] == env["old"][:2]
    by_img = c.post(
        "/api/recommend/top10_to_new",
        data={"k": 2},
        files=[("images", ("a.jpg", image_bytes(env["old"][0]), "image/jpeg"))],
    ).json()
    assert [h["id"] for h in by_img["best_sellers"][0]["items"]] == [
        h["id"] for h in by_ids["best_sellers"][0]["items"]
    ]


def test_search_by_json_text_and_image(env):
    c = env["client"]
    query = {"articleType": "Tshirts", "gender": "Men"}
    attrs = c.post("/api/search", data={"attributes": json.dumps(query), "k": 5})
    assert attrs.status_code == 200 and len(attrs.json()["items"]) == 5
    # JSON queries rank as evaluation and `lookalike search` do: cosine minus each item's hubness offset.
    from lookalike.model import LookalikeModel
    from lookalike.retrieval.exact import exact_topk
    from lookalike.retrieval.stores import open_store

    model, _ = LookalikeModel.load(trained()["checkpoint"])
    ids, vectors, _ = open_store(env["url"]).items()
    bias = model.gallery_bias(vectors)
    assert bias is not None and np.ptp(bias) > 0
    top, scores = exact_topk(model.encode_attributes([query]), vectors, 5, bias=bias)
    assert [h["id"] for h in attrs.json()["items"]] == [ids[j] for j in top[0]]
    np.testing.assert_allclose([h["score"] for h in attrs.json()["items"]], scores[0], atol=1e-4)
    assert c.post("/api/search", data={"text": "black leather shoes", "k": 3}).json()["items"]
    pid = env["old"][2]
    img = c.post("/api/search", files={"image": ("q.jpg", image_bytes(pid), "image/jpeg")}, data={"k": 1}).json()
    assert img["items"][0]["id"] == pid
    assert (
        c.post("/api/search", data={"attributes": '{"shape": "round"}'})
        .json()["detail"]
        .startswith("attribute query has no known field")
    )
    assert "exactly one of attributes, text or image" in c.post("/api/search", data={"k": 3}).json()["detail"]


def test_catalogue_add_update_delete(env):
    c, tmp = env["client"], env["tmp"]
    n0 = len(c.get("/api/items", params={"limit": 1000}).json()["items"])
    src = env["old"][3]
    attrs = {
        **{
            k: env["rows"][src][k]
            for k in ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
        },
        "year": 2017,
    }
    # a failed add writes nothing: no product, no image file
    bad = c.post(
        "/api/items",
        data={"product_id": "n-1", "attributes": json.dumps(attrs)},
        files={"image": ("x.jpg", b"\xff\xd8garbage", "image/jpeg")},
    )
    assert bad.status_code == 400 and c.get("/api/items/n-1").status_code == 404
    assert not [f for f in (tmp / "uploads").iterdir() if f.name != ".lock"]
    ok = c.post(
        "/api/items",
        data={"product_id": "n-1", "attributes": json.dumps(attrs), "text": "copy"},
        files={"image": ("x.jpg", image_bytes(src), "image/jpeg")},
    )
    assert ok.status_code == 201 and ok.json()["attributes"]["is_new"] is True
    assert c.get("/api/items/n-1/image").content == image_bytes(src)
    hit = c.post("/api/recommend/customer_input", data={"product_id": src, "k": 1}).json()["items"][0]
    assert hit["id"] == "n-1" and hit["score"] == pytest.approx(1.0, abs=1e-4)  # in search at once
    assert (
        c.post(
            "/api/items",
            data={"product_id": "n-1", "attributes": json.dumps(attrs)},
            files={"image": ("x.jpg", image_bytes(src), "image/jpeg")},
        ).status_code
        == 409
    )
    assert (
        c.post(
            "/api/items",
            data={"product_id": "../../etc/passwd", "attributes": json.dumps(attrs)},
            files={"image": ("x.jpg", image_bytes(src), "image/jpeg")},
        ).status_code
        == 400
    )
    upd = c.put("/api/items/n-1", data={"attributes": json.dumps({**attrs, "year": 2012, "baseColour": "Teal"})})
    assert upd.status_code == 200 and upd.json()["attributes"]["is_new"] is False
    assert (
        c.put("/api/items/n-1", data={"attributes": json.dumps({**attrs, "year": 2012, "baseColour": "Teal"})}).json()
        == upd.json()
    )  # idempotent
    assert "n-1" not in [
        h["id"] for h in c.post("/api/recommend/customer_input", data={"product_id": src, "k": 20}).json()["items"]
    ]
    from lookalike.retrieval.stores import open_store

    stored = Path(open_store(env["url"]).get("n-1").metadata["image"])
    assert (
        stored.parent == tmp / "uploads" and stored.name.startswith("n-1-") and stored.read_bytes() == image_bytes(src)
    )
    assert c.delete("/api/items/n-1").status_code == 200
    assert not stored.exists() and (trained()["catalog"] / "images" / f"{src}.jpg").exists()
    assert c.get("/api/items/n-1").status_code == 404 and c.delete("/api/items/n-1").status_code == 404
    assert len(c.get("/api/items", params={"limit": 1000}).json()["items"]) == n0


def test_image_paths_cannot_escape_the_image_roots(env):
    from lookalike.retrieval.stores import StoreItem, open_store

    store = open_store(env["url"])
    store.upsert([StoreItem("sneaky", np.ones(store.dim), {"image": "/etc/hostname", "is_new": False})])
    c = env["client"]
    r = c.get("/api/items/sneaky/image")
    assert r.status_code == 403 and "outside the served image roots" in r.json()["detail"]
    lexical = str(trained()["catalog"]) + "/images/../../../../etc/hostname"
    store.upsert([StoreItem("sneaky", np.ones(store.dim), {"image": lexical, "is_new": False})])
    assert c.get("/api/items/sneaky/image").status_code == 403
    assert c.get("/api/items/..%2F..%2Fetc%2Fpasswd/image").status_code == 404
    store.delete(["sneaky"])


def test_images_are_served_when_the_catalogue_folder_is_a_link(env):
    """The loader stores resolved image paths; a catalogue given through a link must still serve them."""
    from lookalike.service.app import ServiceSettings, create_app

    link = env["tmp"] / "catalog-link"
    link.symlink_to(trained()["catalog"], target_is_directory=True)
    settings = ServiceSettings(
        checkpoint=trained()["checkpoint"], store=env["url"], catalog=str(link), upload_dir=str(env["tmp"] / "up2")
    )
    with TestClient(create_app(settings)) as c:
        pid = env["old"][0]
        r = c.get(f"/api/items/{pid}/image")
        assert r.status_code == 200 and r.content == image_bytes(pid)


def test_kpi_and_prometheus_metrics(env):
    c = env["client"]
    c.post("/api/recommend/customer_input", data={"product_id": env["old"][0], "k": 5})
    c.post("/api/recommend/customer_input", data={"product_id": "no-such"})
    kpi = c.get("/api/kpi").json()
    ep = kpi["requests"]["POST /api/recommend/customer_input"]
    assert ep["requests"] >= 2 and ep["by_status"]["200"] >= 1 and ep["by_status"]["404"] >= 1
    assert 0 < ep["p50_ms"] <= ep["p95_ms"] <= ep["p99_ms"]
    assert kpi["catalogue"]["size"] == len(env["rows"]) and kpi["catalogue"]["new"] == len(env["new"])
    assert 0 < kpi["catalogue_coverage"] <= 1 and -1 <= kpi["mean_top1_similarity"] <= 1
    assert (
        kpi["embedding_health"]["catalogue"]["unit_norm_ok"] and not kpi["embedding_health"]["catalogue"]["collapsed"]
    )
    assert kpi["training"]["best_epoch"] == 1 and "hit@1" in kpi["training"]["test_json_to_image"]
    text = c.get("/metrics").text
    assert 'lookalike_requests_total{endpoint="/api/recommend/customer_input",method="POST",status="404"}' in text
    assert "lookalike_request_seconds_bucket" in text and 'lookalike_catalogue_products{kind="new"}' in text


def test_dashboard_json(env):
    d = env["client"].get("/api/dashboard").json()
    assert set(d) == {"kpi", "loss_curve", "top_k_images", "hyperparams", "augmented_samples", "tuning"}
    assert d["tuning"] is None  # trained by `train`, not `tune`
    assert d["loss_curve"][0]["epoch"] == 1 and d["loss_curve"][0]["loss"] > 0
    assert d["top_k_images"] and all("image_url" in h for h in d["top_k_images"][0]["items"])
    assert d["hyperparams"]["train"]["epochs"] == 1 and d["hyperparams"]["new_rule"] == "year>=2016"
    s = d["augmented_samples"][0]
    assert set(s["augmented"]) <= set(s["original"]) and s["augmented"]


def test_restarted_server_and_pgvector_backend_serve_the_same_catalogue(env, tmp_path):
    pid = env["old"][4]
    want = env["client"].post("/api/recommend/customer_input", data={"product_id": pid, "k": 5}).json()["items"]
    again = TestClient(make_app(env["url"], tmp_path))
    assert again.post("/api/recommend/customer_input", data={"product_id": pid, "k": 5}).json()["items"] == want
    url = pg_url("svc")
    ingest(url)
    pg = TestClient(make_app(url, tmp_path))
    got = pg.post("/api/recommend/customer_input", data={"product_id": pid, "k": 5}).json()["items"]
    assert [h["id"] for h in got] == [h["id"] for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-4)


def test_openapi_lists_every_endpoint(env):
    paths = env["client"].get("/openapi.json").json()["paths"]
    for p in (
        "/api/recommend/top10_to_new",
        "/api/recommend/customer_input",
        "/api/search",
        "/api/items/{product_id}",
        "/api/items/{product_id}/image",
        "/api/kpi",
        "/metrics",
        "/api/dashboard",
    ):
        assert p in paths
    assert env["client"].get("/docs").status_code == 200


def test_approximate_search_setting_ranks_with_the_store_index(env, tmp_path):
    """`serve --search approximate` (for a million products) goes through the HNSW graph; on a small catalogue
    the graph's answer equals the exact one."""
    url = f"embedded://{tmp_path}/hnsw?index=hnsw"
    ingest(url)
    approx = TestClient(make_app(url, tmp_path, search="approximate"))
    photo = {"image": ("q.jpg", image_bytes(env["old"][0]), "image/jpeg")}
    a = approx.post("/api/search", data={"k": 5}, files=photo).json()
    assert list((tmp_path / "hnsw").glob("hnsw-*.faiss")), "no HNSW graph was built: the search was exact"
    e = env["client"].post("/api/search", data={"k": 5}, files=photo).json()
    assert [h["id"] for h in a["items"]] == [h["id"] for h in e["items"]] and len(a["items"]) == 5


# --- `lookalike serve --workers 2` on one pgvector store (here to share this module's trained model) --------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    url = pg_url("workers")
    ingest(url)  # this process keeps the pgserver running; the workers join it
    t, port = trained(), _port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lookalike.cli",
            "serve",
            "--workers",
            "2",
            "--model",
            t["checkpoint"],
            "--store",
            url,
            "--catalog",
            str(t["catalog"]),
            "--upload-dir",
            str(tmp / "uploads"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "LOOKALIKE_THREADS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "workers did not start"
        try:
            if httpx.get(f"{base}/api/items?limit=1", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield base, t
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    # Stopped by SIGTERM, a worker never runs its exit handlers: unless it let go of the in-process
    # PostgreSQL at shutdown, its stale entry would keep the server running after every test has left.
    holders = json.loads((pgdata() / ".handle_pids.json").read_text())
    assert os.getpid() in holders and all(psutil.pid_exists(p) for p in holders), holders


def _on_every_worker(base: str, path: str, tries: int = 80) -> dict[str, httpx.Response]:
    """The same GET on fresh connections until both workers have answered it."""
    seen: dict[str, httpx.Response] = {}
    for _ in range(tries):
        r = httpx.get(base + path, timeout=10, headers={"Connection": "close"})
        seen.setdefault(r.headers["x-lookalike-worker"], r)
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered {tries} fresh connections")


def _a_photo_not_in(rows: list[dict]) -> bytes:
    """A real product photo whose bytes no product of `rows` has: searched with it, the product added with it is
    the one right answer (no other product shares the image, so no tie to break)."""
    from service_fixtures import FASHION

    taken = {hashlib.sha256((FASHION / "images" / f"{r['id']}.jpg").read_bytes()).digest() for r in rows}
    ids = {r["id"] for r in rows}
    with open(FASHION / "styles.csv", encoding="utf-8") as f:
        for line in f.readlines()[1:]:
            pid = line.split(",", 1)[0]
            path = FASHION / "images" / f"{pid}.jpg"
            if pid not in ids and path.exists() and hashlib.sha256(data := path.read_bytes()).digest() not in taken:
                return data
    raise AssertionError("every photo of fashion-products is in the test catalogue")


def test_a_write_through_one_worker_is_visible_on_every_other(workers_server):
    base, t = workers_server
    pid = "worker-new-1"
    image = _a_photo_not_in(t["rows"])
    sizes = {r.json()["catalogue"]["size"] for r in _on_every_worker(base, "/api/kpi").values()}  # caches warmed
    assert len(sizes) == 1
    size = sizes.pop()
    r = httpx.post(
        base + "/api/items",
        data={"product_id": pid, "attributes": '{"gender": "Men", "year": 2017}'},
        files={"image": ("p.jpg", image, "image/jpeg")},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    for worker, got in _on_every_worker(base, f"/api/items/{pid}").items():
        assert got.status_code == 200 and got.json()["attributes"]["gender"] == "Men", worker
    for worker, got in _on_every_worker(base, "/api/kpi").items():  # whole-catalogue statistics too
        assert got.json()["catalogue"]["size"] == size + 1, worker
    # the new product is the top match of its own image on both workers (vector and metadata committed together)
    seen = set()
    for _ in range(80):
        s = httpx.post(
            base + "/api/search",
            data={"k": "1"},
            files={"image": ("q.jpg", image, "image/jpeg")},
            headers={"Connection": "close"},
            timeout=30,
        )
        assert s.status_code == 200, s.text
        top = s.json()["items"][0]
        assert top["id"] == pid and top["score"] == pytest.approx(1.0, abs=1e-4), (s.headers["x-lookalike-worker"], top)
        seen.add(s.headers["x-lookalike-worker"])
        if len(seen) == 2:
            break
    assert len(seen) == 2
    assert httpx.delete(f"{base}/api/items/{pid}", timeout=30).status_code == 200
    for worker, got in _on_every_worker(base, f"/api/items/{pid}").items():
        assert got.status_code == 404, worker
