"""Production hardening of the service: bearer tokens with scopes, rate limits, crash leftovers and
product JSON as queries, on the real tiny checkpoint, real images and a real embedded store."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import ingest, make_app, trained

from lookalike.cli import main
from lookalike.retrieval.stores import StoreItem, open_store

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def image_bytes(pid: str) -> bytes:
    return (trained()["catalog"] / "images" / f"{pid}.jpg").read_bytes()


def new_token(path: Path, scope: str, capsys) -> str:
    main(["auth", "add", "--scope", scope, "--file", str(path), "--name", f"{scope} test"])
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    url = f"embedded://{tmp}/store"
    ingest(url)
    rows = trained()["rows"]
    return {"url": url, "tmp": tmp, "rows": {r["id"]: r for r in rows}, "ids": [r["id"] for r in rows]}


@pytest.fixture(scope="module")
def secured(env, tmp_path_factory):
    """An app whose writes need a write token, with one token of each scope."""
    tmp = tmp_path_factory.mktemp("secured")
    auth = tmp / "tokens.json"
    tokens = {}
    for scope in ("read", "write", "admin"):
        with _Capture() as cap:
            main(["auth", "add", "--scope", scope, "--file", str(auth)])
        tokens[scope] = cap.lines[-1]
    client = TestClient(make_app(env["url"], tmp, auth_file=str(auth)))
    return {"client": client, "auth": auth, "tokens": tokens, "tmp": tmp}


class _Capture:
    """stdout of a CLI call inside a module fixture (capsys is function-scoped)."""

    def __enter__(self):
        import contextlib
        import io

        self._buf = io.StringIO()
        self._cm = contextlib.redirect_stdout(self._buf)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        self.lines = self._buf.getvalue().strip().splitlines()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def product_form(env, src: str, pid: str) -> dict:
    attrs = {k: env["rows"][src][k] for k in ("gender", "masterCategory", "articleType", "baseColour")}
    return {
        "data": {"product_id": pid, "attributes": json.dumps({**attrs, "year": 2018})},
        "files": {"image": ("p.jpg", image_bytes(src), "image/jpeg")},
    }


# --- tokens ------------------------------------------------------------------------------------------
def test_auth_add_prints_the_token_once_and_stores_only_its_hash(tmp_path, capsys):
    f = tmp_path / "t.json"
    token = new_token(f, "write", capsys)
    assert len(token) >= 43 and token not in f.read_text()
    rec = json.loads(f.read_text())["tokens"][0]
    import hashlib

    assert rec["sha256"] == hashlib.sha256(token.encode()).hexdigest() and rec["scope"] == "write"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "t.json"]  # no temp file left by the atomic write
    second = new_token(f, "read", capsys)
    assert second != token and len(json.loads(f.read_text())["tokens"]) == 2
    main(["auth", "list", "--file", str(f)])
    listed = capsys.readouterr().out
    assert rec["id"] in listed and "(2 token(s)" in listed and token not in listed and rec["sha256"] not in listed
    main(["auth", "revoke", rec["id"], "--file", str(f)])
    assert [r["scope"] for r in json.loads(f.read_text())["tokens"]] == ["read"]
    with pytest.raises(SystemExit) as e:
        main(["auth", "revoke", rec["id"], "--file", str(f)])
    assert e.value.code == 2 and f"no token with id {rec['id']!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["auth", "add", "--scope", "root", "--file", str(f)])


def test_writes_need_a_write_token_and_reads_stay_open(env, secured, caplog):
    c, t = secured["client"], secured["tokens"]
    store = open_store(env["url"])
    n0 = len(store)
    src, form = env["ids"][5], product_form(env, env["ids"][5], "auth-1")
    caplog.set_level(logging.DEBUG)
    for method, path, kw in (
        ("post", "/api/items", form),
        ("put", f"/api/items/{src}", {"data": form["data"]}),
        ("delete", f"/api/items/{src}", {}),
    ):
        none = getattr(c, method)(path, **kw)
        assert none.status_code == 401 and none.headers["www-authenticate"].startswith('Bearer realm="lookalike"')
        assert "needs a bearer token with scope 'write'" in none.json()["detail"]
        wrong = getattr(c, method)(path, headers=bearer("not-a-token-" + t["write"][::-1]), **kw)
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        read = getattr(c, method)(path, headers=bearer(t["read"]), **kw)
        assert read.status_code == 403 and 'error="insufficient_scope"' in read.headers["www-authenticate"]
        assert "scope 'read'" in read.json()["detail"] and t["read"] not in read.text
    assert len(store) == n0 and store.get(src).metadata == open_store(env["url"]).get(src).metadata
    assert not [f for f in (secured["tmp"] / "uploads").iterdir() if f.name != ".lock"]  # nothing written
    assert c.post("/api/search", data={"text": "blue shirt", "k": 2}).status_code == 200  # reads need no token
    assert c.get(f"/api/items/{src}/image").status_code == 200
    added = c.post("/api/items", headers=bearer(t["write"]), **product_form(env, src, "auth-1"))
    assert added.status_code == 201, added.text
    assert c.delete("/api/items/auth-1", headers=bearer(t["admin"])).status_code == 200  # admin ⊇ write
    assert len(store) == n0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(tok not in logged for tok in t.values())
    who = c.get("/api/auth", headers=bearer(t["write"])).json()
    assert who["writes_need_token"] and not who["reads_need_token"] and who["token"]["scope"] == "write"
    assert c.get("/api/auth/tokens", headers=bearer(t["write"])).status_code == 403
    listed = c.get("/api/auth/tokens", headers=bearer(t["admin"])).json()["tokens"]
    assert sorted(r["scope"] for r in listed) == ["admin", "read", "write"] and "sha256" not in listed[0]


def test_openapi_declares_the_bearer_scheme_on_write_endpoints(secured):
    spec = secured["client"].get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a token from `lookalike auth add` (scopes read, write, admin)",
    }
    paths = spec["paths"]
    for path, method in (
        ("/api/items", "post"),
        ("/api/items/{product_id}", "put"),
        ("/api/items/{product_id}", "delete"),
    ):
        assert paths[path][method]["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/api/search"]["post"]  # reads are open unless --auth-reads


def test_auth_reads_and_a_revoked_token(env, secured, tmp_path, capsys):
    auth = tmp_path / "tokens.json"
    read = new_token(auth, "read", capsys)
    c = TestClient(make_app(env["url"], tmp_path, auth_file=str(auth), auth_reads=True))
    assert c.get("/api/items").status_code == 401 and c.get("/api/kpi").status_code == 401
    assert c.get("/api/items", headers=bearer(read)).json()["total"] == len(env["ids"])
    assert c.get("/").status_code == 200 and c.get("/static/dashboard.js").status_code == 200  # the page itself
    token_id = json.loads(auth.read_text())["tokens"][0]["id"]
    main(["auth", "revoke", token_id, "--file", str(auth)])
    assert c.get("/api/items", headers=bearer(read)).status_code == 401  # the running app re-read the file


def test_serve_refuses_a_public_host_without_auth(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", trained()["checkpoint"], "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no --auth-file is given" in err and "--allow-open-writes" in err
    with pytest.raises(SystemExit):
        main(["serve", "--model", trained()["checkpoint"], "--rate-limit", "lots", "--port", "1"])
    assert "rate limit must look like 20/second" in capsys.readouterr().err


# --- rate limits -------------------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after(env, tmp_path):
    c = TestClient(make_app(env["url"], tmp_path, rate_limit="3/minute"))
    assert [c.get("/api/items", params={"limit": 1}).status_code for _ in range(3)] == [200] * 3
    r = c.get("/api/items")
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 20
    assert "rate limit of 3/minute per client exceeded" in r.json()["detail"]
    assert c.get("/api/kpi").status_code == 429


def test_token_bucket_refills_at_its_rate():
    from lookalike.service.ratelimit import Rate, TokenBuckets

    now = [0.0]
    b = TokenBuckets(Rate.parse("2/s"), max_keys=2, clock=lambda: now[0])
    assert [b.take("a"), b.take("a")] == [0, 0] and b.take("a") == pytest.approx(0.5)
    assert b.take("b") == 0  # buckets are per client
    now[0] += 0.5
    assert b.take("a") == 0 and b.take("a") > 0
    b.take("c")  # a third key drops the least recently used bucket ("b"), which starts full again
    assert b.take("b") == 0 and b.take("b") == 0


# --- crash leftovers ---------------------------------------------------------------------------------
def test_startup_sweeps_what_a_crashed_writer_left(env, tmp_path, caplog):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / ".upload-999999999-abc").write_bytes(b"half an image")  # no such process
    (uploads / "ghost-0123456789abcdef.jpg").write_bytes(image_bytes(env["ids"][0]))  # renamed, never committed
    kept = uploads / "kept-0123456789abcdef.jpg"
    kept.write_bytes(image_bytes(env["ids"][1]))
    url = f"embedded://{tmp_path}/store"
    store = open_store(url, open_store(env["url"]).dim)
    store.upsert([StoreItem("kept", np.ones(store.dim), {"image": str(kept), "is_new": False})])
    from lookalike.service.uploads import UploadDir

    other = UploadDir(uploads)  # a live writer: its temp file and uncommitted image must survive
    live_tmp = uploads / f".upload-{os.getpid()}-live"
    live_tmp.write_bytes(b"in flight")
    with caplog.at_level(logging.WARNING, "lookalike.uploads"):
        assert UploadDir(uploads).sweep(store) == {"temp_files": 1, "orphan_images": 0, "swept_images": 0}
    assert live_tmp.exists() and (uploads / "ghost-0123456789abcdef.jpg").exists()
    other.close()
    live_tmp.unlink()
    with caplog.at_level(logging.WARNING, "lookalike.uploads"):
        app = make_app(url, tmp_path)
    assert app.state.service.swept == {"temp_files": 0, "orphan_images": 1, "swept_images": 1}
    assert "removed 0 temp file(s) and 1 unreferenced image(s)" in caplog.text
    assert sorted(f.name for f in uploads.iterdir()) == [".lock", kept.name]


def test_a_failed_commit_removes_the_placed_image_and_changes_nothing(env, tmp_path):
    from lookalike.errors import LookalikeError
    from lookalike.service.uploads import UploadDir

    store = open_store(env["url"])
    n0, up = len(store), UploadDir(tmp_path)
    final = up.final_path("x", b"bytes", ".jpg")
    with pytest.raises(LookalikeError, match="dimensions"), up.staged(final, b"bytes"):
        store.upsert([StoreItem("x", np.ones(3), {"image": str(final)})])  # wrong dimension: refused
    assert not final.exists() and len(store) == n0 and store.get("x") is None
    with pytest.raises(LookalikeError), up.staged(final, b"bytes", keep=str(final)):  # the row's own image stays
        store.upsert([StoreItem("x", np.ones(3), {})])
    assert final.read_bytes() == b"bytes"


def test_update_replaces_the_image_only_after_the_commit(env, secured):
    c, w = secured["client"], bearer(secured["tokens"]["write"])
    a, b = env["ids"][6], env["ids"][7]
    assert c.post("/api/items", headers=w, **product_form(env, a, "img-1")).status_code == 201
    store = open_store(env["url"])
    first = Path(store.get("img-1").metadata["image"])
    attrs = product_form(env, a, "img-1")["data"]["attributes"]
    same = c.put(
        "/api/items/img-1",
        headers=w,
        data={"attributes": attrs},
        files={"image": ("p.jpg", image_bytes(a), "image/jpeg")},
    )
    assert (
        same.status_code == 200
        and first.exists()
        and Path(open_store(env["url"]).get("img-1").metadata["image"]) == first
    )
    c.put(
        "/api/items/img-1",
        headers=w,
        data={"attributes": attrs},
        files={"image": ("p.jpg", image_bytes(b), "image/jpeg")},
    )
    second = Path(open_store(env["url"]).get("img-1").metadata["image"])
    assert second != first and second.read_bytes() == image_bytes(b) and not first.exists()
    assert c.get("/api/items/img-1/image").content == image_bytes(b)
    assert c.delete("/api/items/img-1", headers=w).status_code == 200 and not second.exists()


# --- product JSON is a query -------------------------------------------------------------------------
def test_a_products_json_is_a_valid_query(env, secured):
    c = secured["client"]
    product = {"gender": "Men", "articleType": "Tshirts", "baseColour": "Black", "year": 2017}
    r = c.post("/api/search", data={"attributes": json.dumps(product), "k": 5})
    assert r.status_code == 200, r.text
    assert r.json()["ignored_fields"] == ["year"] and r.json()["unknown_values"] == {}
    plain = c.post(
        "/api/search", data={"attributes": json.dumps({k: v for k, v in product.items() if k != "year"}), "k": 5}
    ).json()
    assert [h["id"] for h in r.json()["items"]] == [h["id"] for h in plain["items"]] and plain["ignored_fields"] == []
    stored = c.get(f"/api/items/{env['ids'][3]}").json()["attributes"]  # is_new, year …: all as the API returns them
    again = c.post("/api/search", data={"attributes": json.dumps(stored), "k": 3}).json()
    assert "is_new" in again["ignored_fields"] and "year" in again["ignored_fields"] and len(again["items"]) == 3
    bad = c.post("/api/search", data={"attributes": json.dumps({"gender": True})})
    assert bad.status_code == 400 and "attribute 'gender' must be a string, a number or a list of strings" in bad.text


def test_lookalike_search_reads_a_product_json_the_same_way(capsys):
    t = trained()
    main(
        [
            "search",
            "--model",
            t["checkpoint"],
            "--catalog",
            str(t["catalog"]),
            "--no-progress",
            "-k",
            "3",
            "--format",
            "json",
            "--json",
            json.dumps({"gender": "Men", "articleType": "Tshirts", "year": 2017}),
        ]
    )
    out = capsys.readouterr()
    assert "fields the model does not use were ignored: ['year']" in out.err and len(json.loads(out.out)) == 3
