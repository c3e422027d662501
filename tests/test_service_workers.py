"""`lookalike serve --workers 2` on one pgvector store: a write through one worker is seen by the other at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from service_fixtures import ingest, trained
from store_servers import pg_url

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    url = pg_url("workers")
    ingest(url)  # this process keeps the pgserver running; the workers join it
    t, port = trained(), _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", "serve", "--workers", "2", "--model", t["checkpoint"], "--store", url,
         "--catalog", str(t["catalog"]), "--upload-dir", str(tmp / "uploads"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "LOOKALIKE_THREADS": "1"})
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


def _on_every_worker(base: str, path: str, tries: int = 80) -> dict[str, httpx.Response]:
    """The same GET on fresh connections until both workers have answered it."""
    seen: dict[str, httpx.Response] = {}
    for _ in range(tries):
        r = httpx.get(base + path, timeout=10, headers={"Connection": "close"})
        seen.setdefault(r.headers["x-lookalike-worker"], r)
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only workers {sorted(seen)} answered {tries} fresh connections")


def test_a_write_through_one_worker_is_visible_on_every_other(server):
    base, t = server
    pid, source = "worker-new-1", t["rows"][0]["id"]
    image = (t["catalog"] / "images" / f"{source}.jpg").read_bytes()
    sizes = {r.json()["catalogue"]["size"] for r in _on_every_worker(base, "/api/kpi").values()}  # caches warmed
    assert len(sizes) == 1
    size = sizes.pop()
    r = httpx.post(base + "/api/items", data={"product_id": pid, "attributes": '{"gender": "Men", "year": 2017}'},
                   files={"image": ("p.jpg", image, "image/jpeg")}, timeout=30)
    assert r.status_code == 201, r.text
    for worker, got in _on_every_worker(base, f"/api/items/{pid}").items():
        assert got.status_code == 200 and got.json()["attributes"]["gender"] == "Men", worker
    for worker, got in _on_every_worker(base, "/api/kpi").items():  # whole-catalogue statistics too
        assert got.json()["catalogue"]["size"] == size + 1, worker
    # the new product is the top match of its own image on both workers (vector and metadata committed together)
    seen = set()
    for _ in range(80):
        s = httpx.post(base + "/api/search", data={"k": "1"}, files={"image": ("q.jpg", image, "image/jpeg")},
                       headers={"Connection": "close"}, timeout=30)
        assert s.status_code == 200, s.text
        assert s.json()["items"][0]["id"] in (pid, source)
        seen.add(s.headers["x-lookalike-worker"])
        if len(seen) == 2:
            break
    assert len(seen) == 2
    assert httpx.delete(f"{base}/api/items/{pid}", timeout=30).status_code == 200
    for worker, got in _on_every_worker(base, f"/api/items/{pid}").items():
        assert got.status_code == 404, worker
