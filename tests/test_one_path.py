"""One query, one catalogue, one ranked list: `lookalike search --format json` and `POST /api/search` over the
same real products (both stores) give the same ids and scores, for attribute JSON, text and image queries."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from service_fixtures import ingest, make_app, trained
from store_servers import pg_url

from lookalike.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]  # trains, serves, PostgreSQL


@pytest.fixture(scope="module", params=["embedded", "pgvector"])
def api(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one-path")
    url = f"embedded://{tmp}/store" if request.param == "embedded" else pg_url("onepath")
    ingest(url)
    with TestClient(make_app(url, tmp)) as client:
        yield client


def queries() -> list[tuple[str, str, str]]:
    """(name, CLI flag, value): JSON (a short one and a product's own, with fields the towers ignore), text,
    and an image file."""
    rows = trained()["rows"]
    own = {k: v for k, v in rows[7].items() if k not in ("id", "productDisplayName")}
    image = str(trained()["catalog"] / "images" / f"{rows[11]['id']}.jpg")
    return [
        ("json", "--json", json.dumps({"gender": "Men", "articleType": "Tshirts", "baseColour": "Black"})),
        ("product json", "--json", json.dumps(own)),
        ("text", "--text", "black leather office shoes"),
        ("korean text", "--text", "여성용 빨간 가방"),
        ("image", "--image", image),
    ]


@pytest.mark.parametrize("name,flag,value", queries(), ids=[q[0] for q in queries()])
def test_cli_search_and_the_api_rank_alike(api, capsys, name, flag, value):
    t = trained()
    k = 20
    args = ["--model", t["checkpoint"], "--catalog", str(t["catalog"]), flag, value, "-k", str(k)]
    main(["search", *args, "--format", "json", "--no-progress"])
    cli = json.loads(capsys.readouterr().out)
    if flag == "--image":
        with open(value, "rb") as f:
            r = api.post("/api/search", files={"image": ("q.jpg", f.read(), "image/jpeg")}, data={"k": k})
    else:
        r = api.post("/api/search", data={"attributes" if flag == "--json" else "text": value, "k": k})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [h["id"] for h in cli] == [h["id"] for h in body["items"]], name
    assert all(abs(a["score"] - b["score"]) <= 1e-5 for a, b in zip(cli, body["items"])), name
    assert body["ranking"]["certified"] and body["ranking"]["depth"] >= k
