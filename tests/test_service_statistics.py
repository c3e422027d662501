"""The service's statistics off the request path, its request log, the token check before the body, and
client JSON nested too deep — on the real tiny checkpoint, real images and both store backends."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading

import pytest
from fastapi import HTTPException
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.testclient import TestClient
from service_fixtures import ingest, make_app, trained, wait_for
from store_servers import pg_url

from lookalike.retrieval.stores import open_store
from lookalike.service.auth import add_token, authorize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def image_bytes(pid: str) -> bytes:
    return (trained()["catalog"] / "images" / f"{pid}.jpg").read_bytes()


def attributes(pid: str, year: int) -> str:
    row = next(r for r in trained()["rows"] if r["id"] == pid)
    return json.dumps({**{k: row[k] for k in ("gender", "masterCategory", "articleType", "baseColour")}, "year": year})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The catalogue in an embedded store, for the tests that leave it as it is."""
    url = f"embedded://{tmp_path_factory.mktemp('statistics')}/store"
    ingest(url)
    return url


class ReadSpy:
    """Records which threads read every stored row (`items`) or every id (`ids` without a limit)."""

    def __init__(self, monkeypatch, store_class):
        self.calls: list[tuple[str, str]] = []
        items, ids = store_class.items, store_class.ids

        def spy_items(store):
            self.calls.append(("items", threading.current_thread().name))
            return items(store)

        def spy_ids(store, offset=0, limit=None):
            if limit is None:
                self.calls.append(("ids", threading.current_thread().name))
            return ids(store, offset, limit)

        monkeypatch.setattr(store_class, "items", spy_items)
        monkeypatch.setattr(store_class, "ids", spy_ids)

    def outside_the_statistics_thread(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[1] != "catalogue-stats"]


@pytest.mark.parametrize("backend", ["embedded", pytest.param("pgvector", marks=pytest.mark.slow)])
def test_metrics_and_kpi_after_a_write_read_no_row_and_the_statistics_catch_up(backend, tmp_path, monkeypatch):
    url = f"embedded://{tmp_path}/store" if backend == "embedded" else pg_url("stats")
    ingest(url)
    app = make_app(url, tmp_path)
    svc, c = app.state.service, TestClient(app)
    before = c.get("/api/kpi").json()["catalogue"]
    spy = ReadSpy(monkeypatch, type(svc.store))
    old, gone = [r["id"] for r in trained()["rows"] if int(r["year"]) < 2016][:2]
    # a write through the API (an established product becomes new) and one by another handle (a delete)
    assert c.put(f"/api/items/{old}", data={"attributes": attributes(old, 2018)}).status_code == 200
    assert open_store(url).delete([gone]) == 1
    text = c.get("/metrics").text
    kpi = c.get("/api/kpi").json()
    assert spy.outside_the_statistics_thread() == []  # no request read the catalogue
    # exact at once
    assert kpi["catalogue"]["size"] == before["size"] - 1 and kpi["catalogue"]["new"] == before["new"] + 1
    assert kpi["catalogue"]["established"] == before["established"] - 2
    assert f'lookalike_catalogue_products{{kind="size"}} {kpi["catalogue"]["size"]}.0' in text
    assert kpi["catalogue"]["version"] == kpi["statistics"]["current_version"] == svc.store.version()
    # the background thread picks the writes up: the statistics then describe the current version
    wait_for(lambda: svc.stats.latest.version == svc.store.version(), "the statistics of the new version")
    assert ("items", "catalogue-stats") in spy.calls and spy.outside_the_statistics_thread() == []
    s = svc.stats.latest
    assert s.count_new([old]) == 1 and old not in s.central_ids
    assert s.count_new([gone]) == 0 and gone not in s.central_ids
    assert s.n_established == kpi["catalogue"]["established"] and len(s.new_ids) == kpi["catalogue"]["new"]
    after = c.get("/api/kpi").json()["statistics"]
    assert after["store_version"] == after["current_version"] == svc.store.version() and not after["pending"]
    body = c.post("/api/recommend/top10_to_new", data={"k": 2, "limit": 3}).json()
    assert body["statistics"]["store_version"] == svc.store.version()
    assert all(b["id"] != old for b in body["best_sellers"])  # new now: no longer a best-seller candidate
    assert spy.outside_the_statistics_thread() == []
    svc.close()


@pytest.mark.parametrize("backend", ["embedded", pytest.param("pgvector", marks=pytest.mark.slow)])
def test_a_large_catalogue_has_its_statistics_computed_by_a_child_process(backend, tmp_path, monkeypatch):
    url = f"embedded://{tmp_path}/store" if backend == "embedded" else pg_url("child")
    ingest(url)
    app = make_app(url, tmp_path, stats_subprocess_from=0)  # every catalogue counts as large
    svc, c = app.state.service, TestClient(app)
    spy = ReadSpy(monkeypatch, type(svc.store))
    first = svc.stats.latest
    kpi = c.get("/api/kpi").json()
    assert kpi["catalogue"]["new"] == len(first.new_ids) and kpi["embedding_health"]["catalogue"]["unit_norm_ok"]
    pid = first.central_ids[0]
    assert c.delete(f"/api/items/{pid}").status_code == 200
    wait_for(lambda: svc.stats.latest.version == svc.store.version(), "the statistics of the new version")
    assert pid not in svc.stats.latest.central_ids and svc.stats.latest.n_established == first.n_established - 1
    assert spy.calls == []  # this process read no row: the child did
    svc.close()


def test_before_the_first_statistics_endpoints_answer_honestly(store, tmp_path, monkeypatch):
    import lookalike.recommend.statistics as statistics

    gate, compute = threading.Event(), statistics.compute_statistics

    def held(store, **options):  # the first computation takes as long as the test wants
        gate.wait(60)
        return compute(store, **options)

    monkeypatch.setattr(statistics, "compute_statistics", held)
    app = make_app(store, tmp_path, ready=False)
    svc, c = app.state.service, TestClient(app)
    n = len(trained()["rows"])
    kpi = c.get("/api/kpi")
    assert kpi.status_code == 200  # monitoring always answers: counts are the store's own
    k = kpi.json()
    assert k["catalogue"]["size"] == n and k["statistics"]["pending"] and k["statistics"]["store_version"] is None
    assert k["embedding_health"]["catalogue"] is None and k["catalogue_coverage"] is None
    assert f'lookalike_catalogue_products{{kind="size"}} {n}.0' in c.get("/metrics").text
    proxy = c.post("/api/recommend/top10_to_new", data={"k": 2})
    assert proxy.status_code == 503 and proxy.headers["retry-after"] == "5"
    assert "still being computed" in proxy.json()["detail"]
    old = [r["id"] for r in trained()["rows"] if int(r["year"]) < 2016][:2]
    given = c.post("/api/recommend/top10_to_new", data={"k": 2, "product_ids": ",".join(old)})
    assert given.status_code == 200 and given.json()["trend"]["new_collection_size"] == k["catalogue"]["new"]
    assert "statistics" not in given.json()  # nothing whole-catalogue was used
    assert c.get("/api/dashboard").status_code == 200
    gate.set()
    wait_for(lambda: svc.stats.latest is not None, "the first statistics")
    done = c.post("/api/recommend/top10_to_new", data={"k": 2})
    assert done.status_code == 200 and done.json()["statistics"]["store_version"] == svc.store.version()
    assert not c.get("/api/kpi").json()["statistics"]["pending"]
    svc.close()


def test_the_statistics_thread_stops_at_shutdown(store, tmp_path):
    app = make_app(store, tmp_path)
    with TestClient(app):
        thread = app.state.service.stats._thread
        assert thread.is_alive()
    assert not thread.is_alive()


# --- the token check before the body -----------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    auth = tmp / "tokens.json"
    tokens = {scope: add_token(auth, scope)[1] for scope in ("read", "write")}
    return {"app": make_app(store, tmp, auth_file=str(auth)), "tokens": tokens}


def asgi(app, method: str, path: str, headers: dict[str, str], wait: float = 5.0) -> tuple[dict, int]:
    """Send a request whose body never comes; the response (status, headers, body) and how often the app
    asked for the body. A TimeoutError means the app waited for the body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asked, out = 0, {"body": b""}

    async def receive():
        nonlocal asked
        asked += 1
        await asyncio.Event().wait()  # the client never sends its body

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    async def run():
        await asyncio.wait_for(app(scope, receive, send), wait)

    asyncio.run(run())
    return out, asked


MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary", "content-length": "300000"}


def test_a_write_without_a_good_token_is_refused_before_its_body_is_read(secured):
    app, t = secured["app"], secured["tokens"]
    tokens = app.state.service.tokens
    for headers, scope_error in (
        ({}, None),
        ({"authorization": "Bearer not-a-token"}, "invalid_token"),
        ({"authorization": f"Bearer {t['read']}"}, "insufficient_scope"),
    ):
        for method, path in (("POST", "/api/items"), ("PUT", "/api/items/x1"), ("DELETE", "/api/items/x1")):
            res, asked = asgi(app, method, path, {**MULTIPART, **headers})
            assert asked == 0, (method, path, headers)  # answered without waiting for the body
            token = headers.get("authorization", "").removeprefix("Bearer ")
            cred = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None
            with pytest.raises(HTTPException) as want:  # exactly what the route's own dependency answers
                authorize(tokens, "write", cred)
            assert res["status"] == want.value.status_code and json.loads(res["body"]) == {"detail": want.value.detail}
            assert res["headers"]["www-authenticate"] == want.value.headers["WWW-Authenticate"]
            assert scope_error is None or f'error="{scope_error}"' in res["headers"]["www-authenticate"]
    # with a write token, or on a route that needs none, the app waits for the body as before
    for path, headers in (("/api/items", {"authorization": f"Bearer {t['write']}"}), ("/api/search", {})):
        with pytest.raises(TimeoutError):
            asgi(app, "POST", path, {**MULTIPART, **headers}, wait=1.0)


# --- client JSON and an empty catalogue --------------------------------------------------------------
def test_json_nested_too_deep_is_a_400_naming_the_field(store, tmp_path):
    c = TestClient(make_app(store, tmp_path))
    deep = "[" * 5000 + "]" * 5000  # 10 kB
    pid = trained()["rows"][0]["id"]
    photo = image_bytes(pid)
    for path, data, files, field in (
        ("/api/search", {"attributes": deep}, None, "attributes"),
        ("/api/search", {"text": "red shirt", "filters": '{"a": ' + deep + "}"}, None, "filters"),
        ("/api/recommend/customer_input", {"product_id": pid, "filters": deep}, None, "filters"),
        ("/api/recommend/top10_to_new", {"sales": "{" + '"a": {' * 40 + "}" * 41}, None, "sales"),
        (
            "/api/items",
            {"product_id": "deep-1", "attributes": deep},
            {"image": ("p.jpg", photo)},
            "attributes",
        ),
        (f"/api/items/{pid}", {"attributes": deep}, None, "attributes"),
    ):
        method = c.put if path == f"/api/items/{pid}" else c.post
        r = method(path, data=data, files=files)
        assert r.status_code == 400, (path, r.status_code)
        assert r.json()["detail"] == f"{field} is nested more than 32 levels deep"
    assert c.get("/api/items/deep-1").status_code == 404


def test_recommendations_on_an_empty_catalogue_say_it_is_empty(tmp_path):
    c = TestClient(make_app(f"embedded://{tmp_path}/empty", tmp_path))
    pid = trained()["rows"][0]["id"]
    for data, files in (({}, {"image": ("q.jpg", image_bytes(pid), "image/jpeg")}), ({"k": 3}, None)):
        path = "/api/recommend/customer_input" if files else "/api/recommend/top10_to_new"
        r = c.post(path, data=data, files=files)
        assert r.status_code == 400
        assert "the catalogue holds no product yet" in r.json()["detail"]
        assert "lookalike catalog ingest" in r.json()["detail"]
    kpi = c.get("/api/kpi").json()
    assert kpi["catalogue"]["size"] == 0 and not kpi["statistics"]["pending"]


# --- the request log ---------------------------------------------------------------------------------
class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def request_log():
    log = logging.getLogger("lookalike.service.requests")
    handler, level = Lines(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(level)


def test_one_json_line_per_request_with_its_id_and_never_a_token(secured, request_log):
    c, t = TestClient(secured["app"]), secured["tokens"]
    pid = trained()["rows"][0]["id"]
    given = c.get(f"/api/items/{pid}", headers={"X-Request-ID": "trace-42.a"})
    generated = c.get("/api/kpi", headers={"X-Request-ID": "not valid: spaces and " + "x" * 200})
    refused = c.delete("/api/items/nope", headers={"Authorization": f"Bearer {t['read']}"})
    write = {"Authorization": f"Bearer {t['write']}"}
    missing = c.delete("/api/items/nope", headers=write)  # a valid token
    search = c.post("/api/search", data={"text": "blue shirt", "k": 2}, headers=write)
    oversized = c.post("/api/search", content=b"x" * 100, headers={"Content-Length": str(10**9)})
    responses = [given, generated, refused, missing, search, oversized]
    assert [r.status_code for r in responses] == [200, 200, 403, 404, 200, 413]
    assert given.headers["x-request-id"] == "trace-42.a"
    assert all(re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]) for r in responses[1:])
    assert len(request_log) == len(responses)  # one line per request
    records = [json.loads(line) for line in request_log]
    assert [r["request_id"] for r in records] == [r.headers["x-request-id"] for r in responses]
    assert [(r["method"], r["route"], r["status"]) for r in records] == [
        ("GET", "/api/items/{product_id}", 200),
        ("GET", "/api/kpi", 200),
        ("DELETE", "/api/items/{product_id}", 403),
        ("DELETE", "/api/items/{product_id}", 404),
        ("POST", "/api/search", 200),
        ("POST", "oversized", 413),
    ]
    assert all(set(r) == {"request_id", "method", "route", "status", "latency_ms", "client"} for r in records)
    assert all(r["latency_ms"] >= 0 and r["client"] == "testclient" for r in records)
    logged = "\n".join(request_log)
    assert all(tok not in logged and tok[:12] not in logged for tok in t.values()) and "Bearer" not in logged
