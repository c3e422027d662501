"""Training-time augmentations: synonym replacement (the shipped K-Fashion table on real K-Fashion labels),
attribute mixing within a category, cached augmented image views, MixUp on cached vectors, and a training
run with all of them on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.catalogue import load_catalogue
from lookalike.config import AugmentConfig, RunConfig
from lookalike.errors import LookalikeError
from lookalike.towers.vocab import UNK, AttributeVocab
from lookalike.training.augment import Augmenter, read_synonyms, synonym_rows

KFASHION = "kfashion-samples"


@pytest.fixture(scope="module")
def kfashion(fashion_dir):
    return load_catalogue(fashion_dir.parent / KFASHION)


def _augmenter(cfg: AugmentConfig, rows, single, lists, category, synonyms=None, views=None, images=None):
    vocab = AttributeVocab.build(rows, single, lists)
    if synonyms:
        vocab = AttributeVocab.build(rows + synonym_rows(synonyms, vocab, lists), single, lists)
    enc = vocab.encode(rows)
    images = images if images is not None else torch.nn.functional.normalize(torch.randn(len(rows), 8), dim=1)
    return vocab, enc, images, Augmenter(cfg, vocab, enc, images, category, synonyms, views)


def test_kfashion_synonyms_join_the_vocabulary_and_replace_their_values(kfashion):
    schema = kfashion.schema
    table = read_synonyms("kfashion", schema.fields)
    assert "색상" in table and "흰색" in table["색상"]["화이트"]
    rows = [p.attributes for p in kfashion.products]
    vocab, enc, images, aug = _augmenter(
        AugmentConfig(synonyms="kfashion", synonym_p=1.0),
        rows,
        schema.single_fields,
        schema.list_fields,
        schema.category_field,
        table,
    )
    assert aug.active
    white = vocab.index["색상"]["화이트"]
    assert (enc["색상"] == white).any(), "the samples have white products"
    synonyms = {vocab.index["색상"][s] for s in table["색상"]["화이트"]}
    assert UNK not in synonyms  # a user's "흰색" has a trained embedding, not the unknown one
    gen = torch.Generator().manual_seed(0)
    out, targets = aug(enc, images, torch.arange(len(rows)), gen)
    was_white = enc["색상"] == white
    assert set(out["색상"][was_white].tolist()) <= synonyms  # p = 1: every white became a synonym
    no_synonyms = [f for f in vocab.fields if f not in table]
    for f in no_synonyms:
        assert torch.equal(out[f], enc[f])
    assert torch.equal(targets, images)
    off = Augmenter(AugmentConfig(synonyms="kfashion", synonym_p=0.0), vocab, enc, images, None, table)
    out, _ = off(enc, images, torch.arange(len(rows)), gen)
    assert all(torch.equal(out[f], enc[f]) for f in vocab.fields)


def test_synonym_table_errors_name_the_file(tmp_path):
    bad = tmp_path / "syn.json"
    bad.write_text(json.dumps({"colour": {"red": "crimson"}}))
    with pytest.raises(LookalikeError, match=r"syn\.json.*'colour'"):
        read_synonyms(bad, ["colour"])
    with pytest.raises(LookalikeError, match="no file nonexistent"):
        read_synonyms("nonexistent", ["colour"])
    bad.write_text(json.dumps({"colour": {"red": ["blue"]}}))  # a synonym that is itself a value: left out
    vocab = AttributeVocab.build([{"colour": "red"}, {"colour": "blue"}], ["colour"], [])
    assert synonym_rows(read_synonyms(bad, ["colour"]), vocab, []) == []


def test_attribute_mixing_stays_within_the_category():
    rows = [{"cat": c, "colour": f"{c}-colour-{i}", "fit": f"{c}-fit-{i}"} for c in "ab" for i in range(20)]
    vocab, enc, images, aug = _augmenter(AugmentConfig(mix_p=1.0), rows, ["cat", "colour", "fit"], [], "cat")
    idx = torch.arange(len(rows))
    out, _ = aug(enc, images, idx, torch.Generator().manual_seed(1))
    assert torch.equal(out["cat"], enc["cat"])  # the category itself is never mixed
    decoded = {f: [vocab.values[f][int(i) - 2] for i in out[f][:, 0]] for f in ("cat", "colour", "fit")}
    changed = 0
    for j, row in enumerate(rows):
        for f in ("colour", "fit"):
            assert decoded[f][j].startswith(row["cat"] + "-")  # taken from a product of the same category
            changed += decoded[f][j] != row[f]
    assert changed > len(rows) // 2  # p = 1: each product took one field from a (random) sibling


def test_mixup_keeps_the_own_image_dominant():
    rows = [{"cat": c, "colour": str(i)} for c in "ab" for i in range(30)]
    torch.manual_seed(0)
    _, enc, images, aug = _augmenter(AugmentConfig(mixup_alpha=0.4), rows, ["cat", "colour"], [], "cat")
    idx = torch.arange(len(rows))
    _, targets = aug(enc, images, idx, torch.Generator().manual_seed(2))
    torch.testing.assert_close(targets.norm(dim=1), torch.ones(len(rows)))
    own = (targets * images).sum(1)
    assert (own > 0.6).all() and not torch.allclose(targets, images)


@pytest.mark.slow  # runs the real encoder
def test_image_views_are_cached_deterministic_and_sampled(fashion_dir, tmp_path):
    from lookalike.catalogue.schema import ImageRef
    from lookalike.encoders.registry import create_image_encoder
    from lookalike.encoders.views import embed_views, render_view

    paths = sorted((fashion_dir / "images").glob("*.jpg"))[:3]
    im = Image.open(paths[0])
    a, b = render_view(im, "k", 0, 0), render_view(im, "k", 0, 0)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == im.size
    assert not np.array_equal(np.asarray(render_view(im, "k", 1, 0)), np.asarray(a))
    enc = create_image_encoder("efficientnet-lite0", image_size=(64, 48), runtime="torch", cache_dir=tmp_path)
    refs = [ImageRef(p) for p in paths]
    first = embed_views(refs, enc, tmp_path / "cache", 2, progress=False)
    assert first.shape == (2, 3, enc.dim) and np.abs(first).sum(axis=2).min() > 0
    enc.forward = None  # a second call must read every view from the cache, running nothing
    again = embed_views(refs, enc, tmp_path / "cache", 2, progress=False)
    np.testing.assert_array_equal(first, again)
    original = create_image_encoder("efficientnet-lite0", image_size=(64, 48), runtime="torch").encode_images(
        [Image.open(paths[0])]
    )[0]
    assert not np.allclose(first[0, 0], original, atol=1e-3)
    # each epoch draws one of the V + 1 images per product
    rows = [{"cat": "a", "colour": str(i)} for i in range(3)]
    views = torch.nn.functional.normalize(torch.from_numpy(first), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(3, enc.dim), dim=1)
    _, e, images, aug = _augmenter(
        AugmentConfig(image_views=2), rows, ["cat", "colour"], [], "cat", views=views, images=images
    )
    seen = set()
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        _, t = aug(e, images, torch.arange(3), gen)
        for j in range(3):
            options = [images[j], views[0, j], views[1, j]]
            seen.add(next(k for k, o in enumerate(options) if torch.equal(t[j], o)))
    assert seen == {0, 1, 2}


@pytest.mark.slow
def test_training_with_every_augmentation_on(fashion_subset, tmp_path):
    from lookalike.pipeline import run_main

    cfg = RunConfig.model_validate(
        {
            "out_dir": str(tmp_path / "run"),
            "data": {"catalog": str(fashion_subset), "limit": 240},
            "train": {"epochs": 2, "batch_size": 64},
            "eval": {"sample_queries": 0},
            "encoder": {"projection": "center", "image_size": [64, 48]},
            "augment": {
                "synonyms": "fashion-products",
                "synonym_p": 0.3,
                "mix_p": 0.2,
                "image_views": 1,
                "mixup_alpha": 0.4,
            },
        }
    )
    summary = run_main(cfg, progress=False)
    history = json.loads((tmp_path / "run/results/training_results.json").read_text())["history"]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["val_loss"]) for h in history)
    from lookalike.model import LookalikeModel

    model, _ = LookalikeModel.load(summary["checkpoint"])
    assert "Sneakers" in model.vocab.index["articleType"]  # the synonym has its own trained embedding
    assert model.config.augment.image_views == 1
