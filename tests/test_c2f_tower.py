"""Coarse-to-fine tower: masking, permutation invariance, the field split, registry and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.config import RunConfig
from lookalike.encoders.projection import ImageSpace
from lookalike.errors import LookalikeError
from lookalike.losses import InfoNCELoss
from lookalike.model import LookalikeModel
from lookalike.towers.attribute import AttributeTower
from lookalike.towers.coarse_to_fine import CoarseToFineTower, default_standard_fields
from lookalike.towers.registry import create_attribute_tower
from lookalike.towers.vocab import PAD, AttributeVocab

TRAIN = [
    {"category": "coat", "colour": "red", "style": "casual", "material": ["wool", "zip"]},
    {"category": "shirt", "colour": "blue", "style": "formal", "material": ["cotton"]},
    {"category": "dress", "colour": "black", "style": "street", "material": ["lace", "cotton", "zip"]},
]


@pytest.fixture
def vocab() -> AttributeVocab:
    return AttributeVocab.build(TRAIN, ["category", "colour", "style"], ["material"])


def _tower(vocab, **kw) -> CoarseToFineTower:
    torch.manual_seed(0)
    return CoarseToFineTower(
        {f: vocab.size(f) for f in vocab.fields}, vocab.list_fields, 16, embed_dim=8, heads=2, pyramid_dim=32, **kw
    ).eval()


def test_default_split_and_explicit_split(vocab):
    assert default_standard_fields(["a", "b", "c", "d", "e", "f", "g"]) == ["a", "b", "c", "d", "e"]
    t = _tower(vocab)
    assert t.standard == ["category", "colour", "style"] and t.reinforced == ["material"]
    t = _tower(vocab, standard_fields=["colour", "category"])
    assert t.standard == ["category", "colour"] and t.reinforced == ["style", "material"]
    with pytest.raises(ValueError, match="sleeve"):
        _tower(vocab, standard_fields=["sleeve"])


def test_unit_norm_and_reinforced_values_matter(vocab):
    t = _tower(vocab, standard_fields=["category", "colour"])
    with torch.no_grad():
        out = t(vocab.encode(TRAIN))
        a = t(vocab.encode([{**TRAIN[0], "material": ["cotton"]}]))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert not torch.allclose(a, out[:1])  # cross-attention carries the reinforced detail through


def test_padding_is_masked_and_list_order_is_irrelevant(vocab):
    t = _tower(vocab)
    base = {"category": "coat", "colour": "red", "style": "casual"}
    with torch.no_grad():
        alone = t(vocab.encode([{**base, "material": ["wool", "zip"]}]))
        swapped = t(vocab.encode([{**base, "material": ["zip", "wool"]}]))
        enc = vocab.encode(
            [{**base, "material": ["wool", "zip"]}, {**base, "material": ["lace", "cotton", "zip", "wool"]}]
        )
        assert enc["material"][0].tolist()[2:] == [PAD, PAD]
        padded = t(enc)
    torch.testing.assert_close(swapped, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded[0], padded[1])


def test_learns_a_toy_mapping(vocab, one_thread):
    """Trained with the same InfoNCE as the MLP tower, it must pull each product to its own target."""
    t = _tower(vocab).train()
    t.field_dropout = 0.0
    targets = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    loss_fn = InfoNCELoss(0.1)
    opt = torch.optim.AdamW(t.parameters(), lr=2e-2)
    enc = vocab.encode(TRAIN)
    first = None
    for _ in range(30):
        loss = loss_fn(t(enc), targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    t.eval()
    with torch.no_grad():
        sims = t(enc) @ targets.T
    assert loss.item() < 0.3 * first
    assert sims.argmax(dim=1).tolist() == [0, 1, 2]


def test_registry_default_is_mlp_and_checkpoint_round_trip(vocab, tmp_path):
    cfg = RunConfig()
    assert cfg.tower.name == "mlp"
    assert isinstance(create_attribute_tower(cfg.tower, vocab, 16), AttributeTower)
    c2f = cfg.model_copy(update={"tower": cfg.tower.model_copy(update={"name": "coarse-to-fine"})})
    bad = c2f.model_copy(
        update={
            "tower": c2f.tower.model_copy(
                update={"coarse_to_fine": c2f.tower.coarse_to_fine.model_copy(update={"standard_fields": ["sleeve"]})}
            )
        }
    )
    with pytest.raises(LookalikeError, match="sleeve"):
        create_attribute_tower(bad.tower, vocab, 16)
    space = ImageSpace("none").fit(np.eye(16, dtype=np.float32))
    model = LookalikeModel(vocab, space, 16, 8, c2f)
    assert isinstance(model.attribute_tower, CoarseToFineTower)
    model.save(tmp_path / "m.pt")
    again, _ = LookalikeModel.load(tmp_path / "m.pt")
    assert isinstance(again.attribute_tower, CoarseToFineTower)
    np.testing.assert_allclose(again.encode_attributes(TRAIN), model.encode_attributes(TRAIN), atol=1e-6)
