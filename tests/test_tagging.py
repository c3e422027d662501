"""Image → attributes: colour features, calibration helpers, the tagger on real pixels (a synthetic catalogue
whose images are drawn from their attributes), its checkpoint round trip, the audit, K-Fashion by style, `lookalike
tag` and the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.tagging.calibration import coverage_at, ece, fit_temperature, softmax
from lookalike.tagging.colour import AB_BINS, DIM, HUE_BINS, L_BINS, colour_vector, srgb_to_lab


def square(colour: tuple[int, int, int], background=(255, 255, 255), size=(60, 80)) -> Image.Image:
    im = Image.new("RGB", size, background)
    im.paste(Image.new("RGB", (30, 40), colour), (15, 20))
    return im


def test_lab_conversion_matches_known_values():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    assert np.allclose(lab[0], [100, 0, 0], atol=0.1) and np.allclose(lab[1], [0, 0, 0], atol=0.1)
    assert np.allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)  # sRGB red in CIELAB (D65)


def test_colour_vector_sees_the_garment_not_the_white_background():
    red, blue = colour_vector(square((200, 20, 20))), colour_vector(square((20, 40, 200)))
    assert red.shape == (DIM,) and red.dtype == np.float32
    assert red[-1] == pytest.approx(0.25, abs=0.02)  # the square's share of the image; white is background
    assert red[-6] > 0.3 > -0.3 > blue[-6]  # mean b* / 100: yellowish red, blue
    assert colour_vector(Image.new("RGB", (60, 80), "white"))[-1] == 0.0
    # on a dark background (greys count as foreground there) the hue histogram still says red
    hues = slice(L_BINS * AB_BINS * AB_BINS, L_BINS * AB_BINS * AB_BINS + HUE_BINS * 2)
    on_dark = colour_vector(square((200, 20, 20), (30, 30, 30)))
    assert np.argmax(on_dark[hues]) == np.argmax(red[hues]) != np.argmax(blue[hues])


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (4000, 5))
    y = np.array([rng.choice(5, p=p) for p in softmax(z / 2.0)])
    assert fit_temperature(softmax(z), y) == pytest.approx(2.0, rel=0.1)


def test_ece_and_coverage_on_known_cases():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    assert ece(conf, np.array([1.0, 1.0, 0.0, 1.0])) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    share, thr = coverage_at(np.array([0.99, 0.9, 0.8, 0.5]), np.array([1.0, 1.0, 0.0, 0.0]), 0.95)
    assert (share, thr) == (0.5, 0.9)
    assert coverage_at(np.array([0.9]), np.array([0.0]))[0] == 0.0


@pytest.fixture(scope="module")
def tagged(synthetic, tmp_path_factory):
    """The synthetic catalogue embedded (small images), split, and a tagger fitted on it."""
    from lookalike.catalogue.split import split_ids
    from lookalike.config import RunConfig
    from lookalike.encoders.embedding import cache_root, embed_catalogue
    from lookalike.encoders.projection import ImageSpace
    from lookalike.tagging.build import labelled
    from lookalike.tagging.tagger import Tagger

    cfg = RunConfig.model_validate({"encoder": {"image_size": [64, 48], "projection": "center"}})
    emb = embed_catalogue(synthetic, cfg, progress=False, texts=False)
    split = split_ids(emb.catalogue, 0.2, 0.2, 0)
    pos = {p.id: i for i, p in enumerate(emb.products)}
    idx = {k: np.array([pos[i] for i in v]) for k, v in split.items()}
    space = ImageSpace("center").fit(emb.features[idx["train"]])
    data = labelled(emb, space.transform(emb.features), cache_root(cfg))
    schema = emb.catalogue.schema
    tagger = Tagger.fit(data.take(idx["train"]), data.take(idx["val"]), schema.single_fields, schema.list_fields)
    return {"tagger": tagger, "data": data, "idx": idx, "emb": emb}


def test_tagger_reads_the_attributes_the_images_were_drawn_from(tagged):
    from lookalike.tagging.evaluate import tagging_figures

    figures = tagging_figures(tagged["tagger"], tagged["data"].take(tagged["idx"]["test"]))
    assert set(figures) == {"category", "colour", "style", "material"}
    assert figures["material"]["multi_label"] and not figures["colour"]["multi_label"]
    accuracy = {name: {m: d["accuracy"] for m, d in f["methods"].items()} for name, f in figures.items()}
    for name, by_method in accuracy.items():
        # the combination is never much worse than its best method (its weights are fitted on validation)
        assert by_method["combined"] >= max(by_method.values()) - 0.05, (name, by_method)
        combined = figures[name]["methods"]["combined"]
        assert 0 <= combined["ece_calibrated"] <= 1 and combined["top3_accuracy"] >= combined["accuracy"]
    # the fill colour and the background (the style) are read from the pixels; the shape (the category) from the
    # frozen features of 64×48 images, well above chance (1 in 5)
    assert accuracy["colour"]["colour"] >= 0.85 and accuracy["colour"]["combined"] >= 0.85, accuracy["colour"]
    assert accuracy["style"]["combined"] >= 0.95 and accuracy["category"]["combined"] >= 0.45, accuracy
    assert figures["material"]["methods"]["combined"]["macro_f1"] > 0.5


def test_tags_have_the_issue_shape_and_survive_a_checkpoint_round_trip(tagged, tmp_path):
    from lookalike.tagging.tagger import Tagger

    tagger, data = tagged["tagger"], tagged["data"].take(tagged["idx"]["test"][:5])
    probs = tagger.predict(data)
    tags = tagger.tags(probs, 0)
    single, multi = tags["colour"], tags["material"]
    assert isinstance(single["value"], str) and 0 < single["confidence"] <= 1
    assert len(single["alternatives"]) == 3 and all(p <= single["confidence"] for _, p in single["alternatives"])
    assert isinstance(multi["value"], list) and all(multi["probabilities"][v] >= 0.5 for v in multi["value"])
    path = tmp_path / "t.pt"
    torch.save({"tagger": tagger.state()}, path)
    again = Tagger.from_state(torch.load(path, weights_only=True)["tagger"])
    probs2 = again.predict(data)
    for name in probs:
        assert np.allclose(probs[name], probs2[name], atol=2e-3), name  # the gallery travels in float16


def test_a_product_never_votes_for_itself(tagged):
    tagger, data = tagged["tagger"], tagged["data"]
    rows = tagged["idx"]["train"][:20]  # products in the tagger's gallery
    ids = [data.ids[i] for i in rows]
    near, sims = tagger.neighbours(data.vectors[rows])
    assert [tagger.gallery_ids[r] for r in near[np.arange(len(rows)), sims.argmax(1)]] == ids  # itself, first
    near, _ = tagger.neighbours(data.vectors[rows], exclude_ids=ids)
    assert all(pid not in {tagger.gallery_ids[j] for j in r} for pid, r in zip(ids, near))


@pytest.mark.slow
def test_tag_command_tags_photos_and_counts_unreadable_ones(tmp_path, capsys):
    from service_fixtures import trained

    from lookalike.cli import main

    t = trained()
    rows = t["rows"][:2]
    images = [str(t["catalog"] / "images" / f"{r['id']}.jpg") for r in rows]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    main(
        [
            "tag",
            "--model",
            t["checkpoint"],
            "--image",
            *images,
            str(bad),
            str(tmp_path / "gone.jpg"),
            "--format",
            "json",
        ]
    )
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert [r["image"] for r in result] == images
    assert "skipped 2 of 4 images" in err and "missing image × 1" in err and "unreadable image × 1" in err
    for r in result:
        assert {"gender", "articleType", "baseColour"} <= set(r["attributes"])
        a = r["attributes"]["articleType"]
        assert set(a) == {"value", "confidence", "alternatives"} and 0 < a["confidence"] <= 1
    # the main job that trained this model saved the tagger in its checkpoint and its test figures beside it
    evaluation = json.loads((Path(t["checkpoint"]).parent.parent / "results/evaluation.json").read_text())
    tagging = evaluation["tagging"]
    assert set(tagging) == {"gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"}
    combined = tagging["masterCategory"]["methods"]["combined"]
    assert {"accuracy", "macro_f1", "top3_accuracy", "ece", "ece_calibrated", "coverage_at_95"} <= set(combined)
    assert set(tagging["gender"]["methods"]) == {"knn", "probe", "colour", "zero_shot", "combined"}
    with pytest.raises(SystemExit) as e:
        main(["tag", "--model", t["checkpoint"], "--image", str(bad)])
    assert e.value.code == 2 and "none of the 1 images could be read" in capsys.readouterr().err


@pytest.mark.slow
def test_api_tag_by_photo_and_by_product(tmp_path):
    from fastapi.testclient import TestClient
    from service_fixtures import ingest, make_app, trained

    url = f"embedded://{tmp_path}/store"
    ingest(url)
    t = trained()
    c = TestClient(make_app(url, tmp_path))
    row = t["rows"][3]
    photo = (t["catalog"] / "images" / f"{row['id']}.jpg").read_bytes()
    by_photo = c.post("/api/tag", files={"image": ("p.jpg", photo, "image/jpeg")})
    assert by_photo.status_code == 200, by_photo.text
    attrs = by_photo.json()["attributes"]
    assert {"gender", "masterCategory", "articleType", "baseColour"} <= set(attrs)
    assert all(0 < a["confidence"] <= 1 and len(a["alternatives"]) <= 3 for a in attrs.values())
    by_id = c.post("/api/tag", data={"product_id": row["id"]}).json()
    assert by_id["query"] == {"product_id": row["id"]} and by_id["stored"]["gender"] == row["gender"]
    assert set(by_id["attributes"]) == set(attrs)
    assert c.post("/api/tag").status_code == 400
    both = c.post("/api/tag", data={"product_id": row["id"]}, files={"image": ("p.jpg", photo, "image/jpeg")})
    assert both.status_code == 400 and "exactly one" in both.json()["detail"]
    assert c.post("/api/tag", data={"product_id": "no-such"}).status_code == 404
    junk = c.post("/api/tag", files={"image": ("x.jpg", b"junk", "image/jpeg")})
    assert junk.status_code == 400 and "x.jpg" in junk.json()["detail"]


def test_audit_finds_flipped_labels_out_of_fold(tagged):
    from lookalike.tagging.audit import find_issues, out_of_fold
    from lookalike.tagging.tagger import Labelled

    data = tagged["data"]
    rng = np.random.default_rng(1)
    flipped = set(rng.choice(len(data), 12, replace=False).tolist())
    colours = sorted({a["colour"] for a in data.attributes})
    attributes = []
    for i, a in enumerate(data.attributes):
        a = dict(a)
        if i in flipped:
            a["colour"] = colours[(colours.index(a["colour"]) + 1) % len(colours)]
        attributes.append(a)
    noisy = Labelled(data.vectors, data.colour, attributes, data.ids)
    probs = out_of_fold(tagged["tagger"], noisy, folds=4)
    issues = [s for s in find_issues(tagged["tagger"], noisy, probs, [""] * len(data)) if s.field == "colour"]
    found = {s.id for s in issues}
    truth = {data.ids[i] for i in flipped}
    assert len(found & truth) >= 10, (len(found & truth), len(found))
    # the clean products it flags are the tagger's own errors (it reads ~88% of these colours right): far rarer
    assert len(found - truth) <= 0.15 * (len(data) - len(truth)), len(found - truth)
    # what it proposes is mostly the colour the image was drawn with
    drawn = [s.predicted == data.attributes[data.ids.index(s.id)]["colour"] for s in issues if s.id in truth]
    assert np.mean(drawn) >= 0.75, drawn
    assert [s.confidence for s in issues] == sorted((s.confidence for s in issues), reverse=True)


def test_apply_review_writes_beside_the_source_and_never_over_it(tmp_path):
    from lookalike.errors import LookalikeError
    from lookalike.tagging.audit import Issue, apply_review, write_audit

    source = tmp_path / "cat" / "products.csv"
    source.parent.mkdir()
    source.write_text("sku,colour,kind\na1,Red,shirt\na2,Blue,shirt\na3,Green,coat\n", encoding="utf-8")
    before = source.read_bytes()
    issues = [
        Issue("a1", "colour", "Red", "Blue", 0.97, 0.01, 0.01, ""),
        Issue("a3", "kind", "coat", "shirt", 0.91, 0.05, 0.05, ""),
    ]
    table, sheet = write_audit(issues, tmp_path / "audit")
    assert "a1" in sheet.read_text(encoding="utf-8")
    lines = table.read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith(",corrected") and len(lines) == 3
    lines[1] += "Navy"  # the reviewer corrects a1's colour (to something else than predicted), leaves a3 as it is
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dest, n = apply_review(table, source.parent, "sku")
    assert (dest, n) == (source.with_name("products.corrected.csv"), 1)
    assert dest.read_text(encoding="utf-8") == "sku,colour,kind\na1,Navy,shirt\na2,Blue,shirt\na3,Green,coat\n"
    assert source.read_bytes() == before
    with pytest.raises(LookalikeError, match="over the source"):
        apply_review(table, source, "sku", dest=source)
    stale = tmp_path / "stale.csv"
    stale.write_text(lines[0] + "\na2,colour,Red,Blue,0.9,0.1,0.1,,Navy\n", encoding="utf-8")
    dest.unlink()
    with pytest.raises(LookalikeError, match=r"stale.csv:2: product a2 field 'colour' is 'Blue'"):
        apply_review(stale, source, "sku")
    assert not dest.exists() and source.read_bytes() == before


def test_exclude_suspected_mislabels_leaves_them_out_of_training_only(tmp_path):
    from lookalike.config import RunConfig
    from lookalike.errors import LookalikeError
    from lookalike.pipeline import prepare

    base = {
        "data": {"catalog": "synthetic:120"},
        "encoder": {"image_size": [64, 48], "projection": "center"},
        "train": {"train_text": False},
    }
    plain = prepare(RunConfig.model_validate(base), progress=False)
    flagged = [plain.split["train"][0], plain.split["train"][5], plain.split["val"][0]]
    audit = tmp_path / "audit.csv"
    audit.write_text("id,field,stored,corrected\n" + "".join(f"{i},colour,red,\n" for i in flagged), encoding="utf-8")
    cfg = RunConfig.model_validate({**base, "train": {"train_text": False, "exclude_suspected_mislabels": str(audit)}})
    cleaned = prepare(cfg, progress=False)
    assert cleaned.split["train"] == [i for i in plain.split["train"] if i not in flagged]
    assert cleaned.split["val"] == plain.split["val"] and cleaned.split["test"] == plain.split["test"]
    assert len(cleaned.data.images) == len(plain.data.images) - 2
    cfg.train.exclude_suspected_mislabels = str(tmp_path / "none.csv")
    with pytest.raises(LookalikeError, match=r"none\.csv"):
        prepare(cfg, progress=False)


@pytest.mark.slow
def test_search_and_customer_input_return_a_photos_tags_and_search_by_them(tmp_path):
    from fastapi.testclient import TestClient
    from service_fixtures import ingest, make_app, trained

    url = f"embedded://{tmp_path}/store"
    ingest(url)
    t = trained()
    c = TestClient(make_app(url, tmp_path))
    photo = (t["catalog"] / "images" / f"{t['rows'][5]['id']}.jpg").read_bytes()
    files = {"image": ("p.jpg", photo, "image/jpeg")}
    tagged = c.post("/api/tag", files=files).json()["attributes"]
    found = c.post("/api/search", data={"tags": "true", "k": 3}, files=files).json()
    assert found["tags"] == tagged and len(found["items"]) == 3
    assert "tags" not in c.post("/api/search", data={"k": 3}, files=files).json()
    recommended = c.post("/api/recommend/customer_input", data={"tags": "true", "k": 3}, files=files).json()
    assert recommended["tags"] == tagged
    # "this photo's attributes, with colour changed": the same list as the attribute query spelt out
    other = next(v for v in ("Red", "Blue", "Black") if v != tagged["baseColour"]["value"])
    changed = c.post("/api/search", data={"attributes": json.dumps({"baseColour": other}), "k": 5}, files=files).json()
    spelt = {**{f: a["value"] for f, a in tagged.items()}, "baseColour": other}
    direct = c.post("/api/search", data={"attributes": json.dumps(spelt), "k": 5}).json()
    assert changed["query"] == "image+attributes" and changed["tags"] == tagged
    assert [h["id"] for h in changed["items"]] == [h["id"] for h in direct["items"]]


def test_kfashion_samples_are_reported_by_style(tmp_path):
    """The shipped K-Fashion samples filed in style folders: the style (스타일 label, else folder) is a grouping
    for centrality (`lookalike centrality --group-by style`) and for the tagger's accuracy."""
    import shutil

    from conftest import SHARED

    from lookalike.catalogue.kfashion import load_kfashion, style_group
    from lookalike.cli import main
    from lookalike.config import RunConfig
    from lookalike.encoders.embedding import cache_root, embed_catalogue
    from lookalike.tagging.build import labelled
    from lookalike.tagging.evaluate import accuracy_by_group
    from lookalike.tagging.tagger import Tagger

    root = tmp_path / "kfashion"
    for image_id, style in (("100026", "로맨틱"), ("1070263", "리조트"), ("1092253", "레트로")):
        (root / style).mkdir(parents=True)
        for ext in ("json", "jpg"):
            shutil.copyfile(SHARED / "kfashion-samples" / f"{image_id}.{ext}", root / style / f"{image_id}.{ext}")
    cat = load_kfashion(root)
    styles = {p.id: style_group(p) for p in cat.products}
    assert styles == {f"{i}_{slot}": s for i, s in (("100026", "로맨틱"), ("1070263", "리조트"), ("1092253", "레트로"))
                      for slot in ("상의", "하의")}  # fmt: skip
    assert cat.report.counts["style_folder"] == {"로맨틱": 2, "리조트": 2, "레트로": 2}
    # a 스타일 label wins over the folder it was filed in
    moved = next(p for p in cat.products if p.id == "100026_상의")
    moved.extra["style_folder"] = "레트로"
    assert style_group(moved) == "로맨틱"

    out = tmp_path / "centrality"
    main(["centrality", "--catalog", str(root), "--group-by", "style", "--out", str(out), "--image-size", "64", "48",
          "--no-progress"])  # fmt: skip
    report = json.loads((out / "centrality.json").read_text(encoding="utf-8"))
    assert {s: c["n"] for s, c in report["per_category"].items()} == {"로맨틱": 2, "리조트": 2, "레트로": 2}
    assert "리조트" in (out / "centrality.csv").read_text(encoding="utf-8")

    cfg = RunConfig.model_validate({"encoder": {"image_size": [64, 48], "projection": "none"}})
    emb = embed_catalogue(load_kfashion(root), cfg, progress=False, texts=False)
    data = labelled(emb, emb.features / np.linalg.norm(emb.features, axis=1, keepdims=True), cache_root(cfg))
    schema = emb.catalogue.schema
    # six products only: the tagger's training and validation products are the same (a mechanical check)
    tagger = Tagger.fit(data, data, schema.single_fields, schema.list_fields)
    by_style = accuracy_by_group(tagger, data, [style_group(p) for p in emb.products])
    assert {s: g["n"] for s, g in by_style.items()} == {"로맨틱": 2, "리조트": 2, "레트로": 2}
    assert by_style["로맨틱"]["accuracy"]["slot"] == 1.0 and "style" in by_style["로맨틱"]["accuracy"]
    assert "style" not in by_style["리조트"]["accuracy"]  # no 스타일 label there: nothing to score
