"""POST /api/events on the real service: the write scope, the answer's counts and reasons, the body limit,
request ids that events cite, the online KPIs in /api/kpi and /metrics, and acknowledged events surviving a
`kill -9` of a real server process in the middle of a burst."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from service_fixtures import ingest, make_app, trained, wait_for

from lookalike.cli import main
from lookalike.recommend.events import open_events
from lookalike.retrieval.stores import open_store

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def token(path: Path, scope: str, capsys) -> str:
    main(["auth", "add", "--scope", scope, "--file", str(path)])
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("events")
    url = f"embedded://{tmp}/store"
    ingest(url)
    rows = trained()["rows"]
    return {
        "url": url,
        "tmp": tmp,
        "ids": [r["id"] for r in rows],
        "new": [r["id"] for r in rows if int(r["year"]) >= 2016],
    }


def event(i: int, pid: str, kind: str = "click", **extra) -> dict:
    return {
        "event_id": f"ev-{i}",
        "customer_id": "c1",
        "type": kind,
        "product_id": pid,
        "ts": "2026-01-02T03:04:05Z",
        **extra,
    }


def test_events_need_the_write_scope_and_bad_batches_store_nothing(env, tmp_path, capsys):
    auth = tmp_path / "tokens.json"
    read, write = token(auth, "read", capsys), token(auth, "write", capsys)
    client = TestClient(make_app(env["url"], tmp_path, auth_file=str(auth)))
    body = {"events": [event(1, env["ids"][0]), event(2, env["ids"][1], "cart"), event(1, env["ids"][0])]}
    assert client.post("/api/events", json=body).status_code == 401
    assert client.post("/api/events", json=body, headers={"Authorization": f"Bearer {read}"}).status_code == 403
    w = {"Authorization": f"Bearer {write}"}
    r = client.post("/api/events", json=body, headers=w)
    assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert client.post("/api/events", json=body, headers=w).json() == {"accepted": 0, "duplicates": 3, "rejected": []}
    bad = {"events": [event(10, "no-such-product"), {**event(11, env["ids"][0]), "ts": "3000-01-01T00:00:00Z"}]}
    r = client.post("/api/events", json=bad, headers=w)
    assert r.status_code == 422, r.text
    assert [x["reason"] for x in r.json()["rejected"]] == [
        "unknown product id 'no-such-product'",
        "timestamp '3000-01-01T00:00:00Z' is in the future",
    ]
    big = b'{"events": [' + b" " * (10 * 1024 * 1024) + b"]}"
    r = client.post("/api/events", content=big, headers={**w, "Content-Type": "application/json"})
    assert r.status_code == 413 and "byte limit" in r.json()["detail"]
    assert client.post("/api/events", content=b"{oops", headers=w).status_code == 400
    assert client.get("/api/kpi").json()["online"]["events"] == 2
    assert client.app.state.service.events.count_stored(["ev-10", "ev-11"]) == 0


def test_recommendations_carry_a_request_id_that_events_cite(env, tmp_path):
    client = TestClient(make_app(env["url"], tmp_path))
    old = next(i for i in env["ids"] if i not in env["new"])
    r = client.post("/api/recommend/customer_input", data={"product_id": old, "k": 5})
    assert r.status_code == 200
    rid, shown = r.json()["request_id"], [it["id"] for it in r.json()["items"]]
    assert rid == r.headers["x-request-id"] and len(shown) == 5
    events = [event(100 + j, pid, "impression", request_id=rid) for j, pid in enumerate(shown)]
    events += [event(200, shown[2], "click", request_id=rid), event(201, shown[2], "purchase", request_id=rid)]
    assert client.post("/api/events", json={"events": events}).json()["accepted"] == 7
    ci = client.get("/api/kpi").json()["online"]["per_endpoint"]["customer_input"]
    assert (ci["impressions"], ci["clicks"], ci["purchases"], ci["lists_served"], ci["lists_clicked"]) == (
        5,
        1,
        1,
        1,
        1,
    )
    assert (ci["ctr"], ci["ctr@10"], ci["purchase_rate"]) == (0.2, 1.0, 1.0)
    metrics = client.get("/metrics").text
    assert 'lookalike_online_events{endpoint="customer_input",type="impression",variant="none"} 5.0' in metrics
    assert 'lookalike_online_lists{endpoint="customer_input",kind="clicked",variant="none"} 1.0' in metrics


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_acknowledged_events_survive_kill_9_of_the_server_mid_burst(env, tmp_path):
    t, port = trained(), _port()
    url = f"embedded://{tmp_path}/store"
    ingest(url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lookalike.cli",
            "-q",
            "serve",
            "--model",
            t["checkpoint"],
            "--store",
            url,
            "--catalog",
            str(t["catalog"]),
            "--upload-dir",
            str(tmp_path / "uploads"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "LOOKALIKE_THREADS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the server did not start"
        try:
            if httpx.get(f"{base}/api/items?limit=1", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    acked: list[str] = []
    stop = threading.Event()

    def burst(worker: int) -> None:
        with httpx.Client(timeout=10) as c:
            for b in range(100_000):
                if stop.is_set():
                    return
                ids = [f"w{worker}-b{b}-{j}" for j in range(50)]
                body = {
                    "events": [
                        event(0, env["ids"][(b + j) % len(env["ids"])]) | {"event_id": i} for j, i in enumerate(ids)
                    ]
                }
                try:
                    r = c.post(f"{base}/api/events", json=body)
                except httpx.HTTPError:
                    return  # the server is gone: this batch was never acknowledged
                assert r.status_code == 200 and r.json()["accepted"] == 50, r.text
                acked.extend(ids)

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(2)]
    for th in threads:
        th.start()
    while len(acked) < 500 and all(th.is_alive() for th in threads):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    stop.set()
    for th in threads:
        th.join(30)
    assert len(acked) >= 500
    store = open_store(url)
    log = open_events(store)
    assert log.count_stored(acked) == len(acked)  # every acknowledged event, once (event_id is the key)
    assert log.kpi()["events"] == log.stored() >= len(acked)  # the counters committed with the events
    log.close()


def test_customer_input_takes_a_history_as_json_as_a_form_or_from_logged_events(env, tmp_path):
    client = TestClient(make_app(env["url"], tmp_path))
    old = [i for i in env["ids"] if i not in env["new"]][:4]
    body = {
        "history": [
            {"product_id": old[0], "event": "click", "ts": "2026-01-01T00:00:00Z"},
            {"product_id": old[1], "event": "purchase", "ts": "2026-01-02T00:00:00Z"},
            {"attributes": {"gender": "Women", "articleType": "Tops"}},
        ],
        "k": 6,
    }
    r = client.post("/api/recommend/customer_input", json=body)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["profile"] == "multi-interest" and j["query"] == {"history": 3, "from": "request"} and j["interests"]
    assert len(j["items"]) == 6 and not {it["id"] for it in j["items"]} & set(old)
    assert all(it["id"] in env["new"] and 0 <= it["interest"] < len(j["interests"]) for it in j["items"])
    assert sum(i["weight"] for i in j["interests"]) == pytest.approx(1.0, abs=1e-3)
    mean = client.post("/api/recommend/customer_input", json={**body, "profile": "mean"}).json()
    assert len(mean["interests"]) == 1 and {it["interest"] for it in mean["items"]} == {0}
    form = client.post("/api/recommend/customer_input", data={"product_ids": f"{old[0]}, {old[1]}", "k": 4}).json()
    assert form["query"] == {"history": 2, "from": "request"} and len(form["items"]) == 4
    events = [
        {**event(300 + n, pid, kind), "customer_id": "c9"}
        for n, (pid, kind) in enumerate(zip(old[2:], ["click", "cart"]))
    ]
    assert client.post("/api/events", json={"events": events}).json()["accepted"] == 2
    logged = client.post("/api/recommend/customer_input", data={"customer_id": "c9", "k": 3}).json()
    assert logged["query"] == {"history": 2, "customer_id": "c9", "from": "logged events"}
    assert {m for i in logged["interests"] for m in i["members"]} <= set(old[2:])
    r = client.post("/api/recommend/customer_input", data={"customer_id": "nobody"})
    assert r.status_code == 404 and "no logged events" in r.text
    r = client.post("/api/recommend/customer_input", json={"history": [{"product_id": old[0], "event": "like"}]})
    assert r.status_code == 400 and "history[0]: unknown event 'like'" in r.text
    r = client.post("/api/recommend/customer_input", json={"history": [], "k": 0})
    assert r.status_code == 400 and "k must be an integer" in r.text


def test_an_experiment_splits_customers_sticky_and_reports_per_variant(env, tmp_path, capsys):
    exp = tmp_path / "exp.json"
    variants = [{"name": "mean", "share": 0.5, "profile": "mean"}, {"name": "multi", "share": 0.5, "diversity": 0.2}]
    exp.write_text(json.dumps({"name": "ab1", "variants": variants, "min_lists": 5}))
    client = TestClient(make_app(env["url"], tmp_path, experiment=str(exp)))
    old = [i for i in env["ids"] if i not in env["new"]]
    seen, clicks = {}, {"ab1:mean": 0, "ab1:multi": 0}
    for c in range(12):
        for _ in range(2):  # the same customer twice: the same variant
            j = client.post(
                "/api/recommend/customer_input",
                data={"product_ids": f"{old[0]},{old[5]}", "customer_id": f"cust{c}", "k": 3},
            ).json()
            assert seen.setdefault(c, j["variant"]) == j["variant"]
            assert j["profile"] == ("mean" if j["variant"] == "ab1:mean" else "multi-interest")
        if c % 3 == 0:
            e = {**event(500 + c, j["items"][0]["id"], request_id=j["request_id"]), "customer_id": f"cust{c}"}
            assert client.post("/api/events", json={"events": [e]}).json()["accepted"] == 1
            clicks[j["variant"]] += 1
    assert set(seen.values()) == {"ab1:mean", "ab1:multi"}
    rep = client.get("/api/experiments/ab1").json()
    for name in ("mean", "multi"):
        v = rep["variants"][name]
        assert v["lists_served"] == 2 * list(seen.values()).count(f"ab1:{name}")
        assert v["ctr@10"]["successes"] == clicks[f"ab1:{name}"]
    assert set(rep["comparisons"]["multi vs mean"]["ctr@10"]) >= {"difference", "ci", "p_value", "mde", "too_early"}
    assert client.get("/api/experiments/other").status_code == 404
    main(["experiment", "report", "--experiment", str(exp), "--store", env["url"], "--format", "json"])
    assert json.loads(capsys.readouterr().out) == rep


def test_profile_tower_ranks_with_the_served_user_tower(env, tmp_path):
    from lookalike.towers.user import UserTower

    dim = open_store(env["url"]).dim
    UserTower(dim).save(tmp_path / "u.pt")
    client = TestClient(make_app(env["url"], tmp_path, user_tower=str(tmp_path / "u.pt")))
    old = [i for i in env["ids"] if i not in env["new"]][:3]
    body = {"history": [{"product_id": p, "event": "click"} for p in old], "k": 4, "profile": "tower"}
    j = client.post("/api/recommend/customer_input", json=body).json()
    assert j["profile"] == "tower" and len(j["items"]) == 4 and len(j["interests"]) == 1
    plain = TestClient(make_app(env["url"], tmp_path))
    r = plain.post("/api/recommend/customer_input", json=body)
    assert r.status_code == 400 and "needs a trained user tower" in r.text


def test_top10_to_new_takes_its_best_sellers_from_purchase_events_and_reports_the_proxy_check(env, tmp_path):
    client = TestClient(make_app(env["url"], tmp_path, best_seller_window_days=7))
    before = client.post("/api/recommend/top10_to_new", data={"k": 2, "limit": 3}).json()
    assert before["source"] == "centrality" and "centrality proxy" in before["basis"]
    old = [i for i in env["ids"] if i not in env["new"]][:4]
    now = time.time()
    stamp = lambda days: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - days * 86_400))  # noqa: E731
    units = {old[0]: 2, old[1]: 5, old[2]: 3}
    events = [{**event(f"sale-{p}-{j}", p, "purchase"), "ts": stamp(1)} for p, n in units.items() for j in range(n)] + [
        {**event(f"sale-old-{j}", old[3], "purchase"), "ts": stamp(10)} for j in range(9)
    ]  # outside 7 days
    assert client.post("/api/events", json={"events": events}).json()["accepted"] == 19
    body = client.post("/api/recommend/top10_to_new", data={"k": 2, "fraction": 1.0}).json()
    assert body["source"] == "purchases" and "last 7 days" in body["basis"]
    assert [(s["id"], s["units"]) for s in body["best_sellers"]] == [(old[1], 5), (old[2], 3), (old[0], 2)]
    svc = client.app.state.service
    wait_for(lambda: svc.stats.proxy is not None and svc.stats.proxy.n_products == 3, "the proxy check")
    proxy = client.get("/api/kpi").json()["online"]["best_seller_proxy"]
    assert (proxy["n_products"], proxy["units"], proxy["window_days"]) == (3, 10, 7)
    assert "lookalike_best_seller_proxy_products 3.0" in client.get("/metrics").text
