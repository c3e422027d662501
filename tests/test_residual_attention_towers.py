"""The residual MLP and field self-attention towers: shapes, masking, a real batch they learn from, the
registry and the checkpoint round trip through the normal load path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.config import RunConfig, load_config
from lookalike.encoders.projection import ImageSpace
from lookalike.errors import LookalikeError
from lookalike.losses import InfoNCELoss
from lookalike.model import LookalikeModel
from lookalike.towers.attention import FieldAttentionTower
from lookalike.towers.residual import ResidualTower
from lookalike.towers.vocab import PAD, AttributeVocab

TOWERS = {
    "residual-relu-batch": {"name": "residual", "residual": {"depth": 2, "activation": "relu", "norm": "batch"}},
    "residual-silu-layer": {"name": "residual", "residual": {"depth": 3, "activation": "silu", "norm": "layer"}},
    "attention": {"name": "attention", "attention": {"dim": 32, "heads": 4, "layers": 2}},
}


@pytest.fixture(scope="module")
def real_batch(fashion_subset):
    """96 real products: their attributes and their real frozen image vectors (the test run's cache)."""
    from lookalike.catalogue import load_catalogue
    from lookalike.catalogue.split import subsample
    from lookalike.encoders.embedding import embed_catalogue
    from lookalike.evaluation.evaluator import relevance_keys

    cat = subsample(load_catalogue(fashion_subset), 96, 0)
    small = RunConfig.model_validate({"encoder": {"image_size": [64, 48], "runtime": "torch"}})  # as service_fixtures
    emb = embed_catalogue(cat, small, progress=False, texts=False)
    schema = emb.catalogue.schema
    rows = [p.attributes for p in emb.products]
    vocab = AttributeVocab.build(rows, schema.single_fields, schema.list_fields)
    space = ImageSpace("center").fit(emb.features)
    images = torch.from_numpy(space.transform(emb.features))
    groups = torch.from_numpy(relevance_keys(emb.products, schema.fields))
    return vocab, space, rows, images, groups


def _config(tower: dict) -> RunConfig:
    return RunConfig.model_validate({"tower": {"field_dim": 16, "hidden_dim": 64, **tower}})


@pytest.mark.slow  # embeds 96 real images
@pytest.mark.parametrize("name", TOWERS)
def test_tower_learns_a_real_batch_and_round_trips(name, real_batch, tmp_path, one_thread):
    vocab, space, rows, images, groups = real_batch
    cfg = _config(TOWERS[name])
    torch.manual_seed(0)
    model = LookalikeModel(vocab, space, images.shape[1], 8, cfg)
    assert type(model.attribute_tower) is (ResidualTower if cfg.tower.name == "residual" else FieldAttentionTower)
    enc = vocab.encode(rows)
    loss_fn = InfoNCELoss(0.07)
    opt = torch.optim.AdamW(model.attribute_tower.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(15):
        q = model.attribute_tower(enc)
        assert q.shape == (len(rows), images.shape[1])
        loss = loss_fn(q, images, groups)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
    out = model.encode_attributes(rows[:5])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m.pt")
    again, payload = LookalikeModel.load(tmp_path / "m.pt")
    assert type(again.attribute_tower) is type(model.attribute_tower)
    assert payload["config"]["tower"] == cfg.tower.model_dump(mode="json")
    np.testing.assert_allclose(again.encode_attributes(rows), model.encode_attributes(rows), atol=1e-5)


def test_attention_tower_masks_padding_and_ignores_list_order():
    vocab = AttributeVocab.build(
        [{"colour": "red", "tags": ["a", "b", "c"]}, {"colour": "blue", "tags": ["d"]}], ["colour"], ["tags"]
    )
    torch.manual_seed(0)
    t = FieldAttentionTower({f: vocab.size(f) for f in vocab.fields}, vocab.list_fields, 8, dim=16, heads=2).eval()
    with torch.no_grad():
        alone = t(vocab.encode([{"colour": "red", "tags": ["a", "b"]}]))
        swapped = t(vocab.encode([{"colour": "red", "tags": ["b", "a"]}]))
        enc = vocab.encode([{"colour": "red", "tags": ["a", "b"]}, {"colour": "red", "tags": ["a", "b", "c", "d"]}])
        assert enc["tags"][0].tolist()[2:] == [PAD, PAD]
        padded = t(enc)
        empty = t(vocab.encode([{"tags": []}]))
    torch.testing.assert_close(swapped, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(empty).all()


def test_tower_options_are_validated(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"tower": {"name": "attention", "attention": {"dim": 30, "heads": 4}}}')
    with pytest.raises(LookalikeError, match=r"multiple of tower\.attention\.heads"):
        load_config(bad)
    bad.write_text('{"tower": {"name": "residual", "residual": {"activation": "tanh"}}}')
    with pytest.raises(LookalikeError, match="activation"):
        load_config(bad)
    bad.write_text('{"tower": {"name": "transformer"}}')
    with pytest.raises(LookalikeError, match=r"tower\.name"):
        load_config(bad)
