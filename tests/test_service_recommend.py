"""MMR reranking, the new-product rule and the catalogue CLI (`lookalike catalog ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import ingest, trained

from lookalike.catalogue import ImageRef, Product
from lookalike.cli import main
from lookalike.errors import LookalikeError
from lookalike.recommend.newness import NewRule
from lookalike.retrieval.rerank.mmr import mmr
from lookalike.retrieval.stores import open_store

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_mmr_hand_worked_example():
    a = np.array([1.0, 0.0])
    b = np.array([0.0, 1.0])
    vecs = np.stack([a, a, b])  # a near-duplicate pair and one different product
    rel = np.array([0.9, 0.89, 0.5])
    assert mmr(rel, vecs, 3, lam=1.0).tolist() == [0, 1, 2]  # λ = 1: plain ranking
    # λ = 0.5: after item 0, item 1 scores .5·.89 − .5·1 = −.055 and item 2 scores .5·.5 − 0 = .25
    assert mmr(rel, vecs, 3, lam=0.5).tolist() == [0, 2, 1]
    assert mmr(rel, vecs, 10, lam=0.5).tolist() == [0, 2, 1]  # k larger than the list
    assert mmr(rel[:0], vecs[:0], 5).tolist() == []
    with pytest.raises(ValueError, match="lambda"):
        mmr(rel, vecs, 2, lam=1.5)


def test_mmr_raises_diversity_on_clustered_candidates():
    from lookalike.evaluation.diversity import intra_list_diversity

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    x = centres[np.repeat(np.arange(4), 10)] + 0.05 * rng.standard_normal((40, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rel = x @ x[0]
    top = np.argsort(-rel)[:5]
    div = mmr(rel, x, 5, lam=0.5)
    assert div[0] == top[0]
    assert intra_list_diversity(x[div]) > intra_list_diversity(x[top]) + 0.2


def _p(**extra) -> Product:
    return Product("1", ImageRef("x.jpg"), {"season": "Summer"}, extra={k: str(v) for k, v in extra.items()})


def test_new_product_rules():
    year = NewRule.parse("year>=2016")
    assert year.is_new(_p(year=2016)) and year.is_new(_p(year="2017.0")) and not year.is_new(_p(year=2015))
    assert not year.is_new(_p()) and not year.is_new(_p(year="n/a"))
    flag = NewRule.parse("is_new=1,true,yes")
    assert flag.is_new(_p(is_new="TRUE")) and not flag.is_new(_p(is_new=0))
    assert NewRule.parse("season = Summer, Fall").is_new(_p())
    assert str(year) == "year>=2016"
    with pytest.raises(LookalikeError, match="FIELD>=NUMBER or FIELD=V1,V2"):
        NewRule.parse("year > 2016")
    with pytest.raises(LookalikeError, match="'soon' is not a number"):
        NewRule.parse("year>=soon")


def test_catalog_cli_add_update_delete_list(tmp_path, capsys):
    t = trained()
    url = f"embedded://{tmp_path}/store"
    ingest(url)
    n = len(t["rows"])
    src = t["rows"][0]
    attrs = {
        k: src[k] for k in ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
    }
    image = t["catalog"] / "images" / f"{src['id']}.jpg"
    base = ["--model", t["checkpoint"], "--store", url]
    up = ["--upload-dir", str(tmp_path / "up")]
    main(
        [
            "catalog",
            "add",
            *base,
            *up,
            "--id",
            "cli-1",
            "--attributes",
            json.dumps({**attrs, "year": 2018}),
            "--image",
            str(image),
            "--text",
            "copy of the first product",
        ]
    )
    store = open_store(url)
    item = store.get("cli-1")
    assert item.metadata["is_new"] is True and item.metadata["name"] == "copy of the first product"
    stored = Path(item.metadata["image"])  # under its final, content-unique name, committed after it was in place
    assert stored.parent == tmp_path / "up" and stored.name.startswith("cli-1-") and stored.suffix == ".jpg"
    assert stored.read_bytes() == image.read_bytes()
    assert store.search(store.get(src["id"]).vector, 1, {"is_new": True}, exclude_ids=[src["id"]])[0][0][0] == "cli-1"
    main(["catalog", "update", *base, *up, "--id", "cli-1", "--attributes", json.dumps({**attrs, "year": 2011})])
    assert store.get("cli-1").metadata["is_new"] is False
    np.testing.assert_allclose(store.get("cli-1").vector, item.vector)  # no new image: the vector is kept
    capsys.readouterr()
    main(["catalog", "list", "--store", url, "--limit", "1000"])
    assert f"({n + 1} products)" in capsys.readouterr().out
    main(["catalog", "delete", "--store", url, "cli-1"])
    assert store.get("cli-1") is None and len(store) == n


@pytest.fixture(scope="module")
def one_product(tmp_path_factory):
    """A store holding one product added through the CLI; the failing commands below must leave it so."""
    t, tmp = trained(), tmp_path_factory.mktemp("cli")
    existing = t["rows"][0]["id"]
    jpg = str(t["catalog"] / "images" / f"{existing}.jpg")
    common = ["--model", t["checkpoint"], "--store", f"embedded://{tmp}/store", "--upload-dir", str(tmp / "up")]
    main(["catalog", "add", *common, "--id", existing, "--attributes", '{"usage": "Casual"}', "--image", jpg])
    (tmp / "notes.txt").write_text("not an image")
    return {"common": common, "existing": existing, "jpg": jpg, "txt": str(tmp / "notes.txt"), "tmp": tmp}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["add", "--id", "x", "--attributes", "{}", "--image", "IMG_TXT"], "is not a readable image"),
        (["add", "--id", "x", "--attributes", "[1]", "--image", "IMG_JPG"], "--attributes must be a JSON object"),
        (["add", "--id", "EXISTING", "--attributes", '{"usage": "Casual"}', "--image", "IMG_JPG"], "exists"),
        (["update", "--id", "nope", "--attributes", '{"usage": "Casual"}'], "unknown product id 'nope'"),
        (["add", "--id", "x", "--attributes", "{}", "--new-rule", "new"], "must look like FIELD>=NUMBER"),
    ],
)
def test_catalog_cli_mistakes_are_one_line_and_write_nothing(one_product, capsys, argv, message):
    o = one_product
    argv = [{"IMG_TXT": o["txt"], "IMG_JPG": o["jpg"], "EXISTING": o["existing"]}.get(a, a) for a in argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["catalog", argv[0], *o["common"], *argv[1:]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("lookalike: error: ") and message in err and err.count("\n") == 1
    assert open_store(f"embedded://{o['tmp']}/store").ids() == [o["existing"]]
    left = [p.name for p in (o["tmp"] / "up").iterdir() if p.name != ".lock"]
    assert len(left) == 1 and left[0].startswith(f"{o['existing']}-") and left[0].endswith(".jpg")


def test_delete_of_unknown_ids_and_unknown_store_scheme_are_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["catalog", "delete", "--store", "redis://localhost/x", "a"])
    assert e.value.code == 2 and "unknown store URL scheme 'redis'" in capsys.readouterr().err
    open_store(f"embedded://{tmp_path}/s", dim=4)
    with pytest.raises(SystemExit) as e:
        main(["catalog", "delete", "--store", f"embedded://{tmp_path}/s", "a"])
    assert e.value.code == 2 and "none of ['a'] is in the store" in capsys.readouterr().err
