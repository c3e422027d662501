"""Attribute vocabulary, attribute and text towers, and the InfoNCE loss, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.losses.infonce import InfoNCELoss
from lookalike.towers.attribute import AttributeTower
from lookalike.towers.text import TextTower
from lookalike.towers.vocab import PAD, UNK, AttributeVocab
from lookalike.training.relatedness import relatedness, value_information

TRAIN = [
    {"colour": "red", "fit": "loose", "tags": ["cotton", "summer"]},
    {"colour": "blue", "fit": "tight", "tags": ["wool"]},
    {"colour": "black", "fit": "loose", "tags": ["summer", "wool", "zip"]},
]


@pytest.fixture
def vocab() -> AttributeVocab:
    return AttributeVocab.build(TRAIN, ["colour", "fit"], ["tags"])


# ------------------------------------------------------------------------------------------------- vocab


def test_vocab_build_and_ids(vocab):
    assert (PAD, UNK) == (0, 1)
    assert vocab.fields == ["colour", "fit", "tags"]
    assert vocab.values["colour"] == ["black", "blue", "red"]  # sorted, ids from 2
    assert vocab.index["colour"] == {"black": 2, "blue": 3, "red": 4}
    assert vocab.size("colour") == 5 and vocab.size("tags") == 4 + 2


def test_vocab_min_count():
    v = AttributeVocab.build(TRAIN, ["colour", "fit"], ["tags"], min_count=2)
    assert v.values == {"colour": [], "fit": ["loose"], "tags": ["summer", "wool"]}


def test_vocab_encode_shapes_and_unknowns(vocab):
    rows = [
        {"colour": "red", "fit": "tight", "tags": ["wool", "cotton"]},
        {"colour": "purple", "tags": []},  # unseen colour, missing fit, empty list
        {"colour": "blue", "fit": "loose", "tags": ["cotton", "glitter", "summer", "zip"]},  # one unseen tag
        {"colour": "black", "fit": "loose", "tags": "zip"},  # list field given as a bare string
        {"colour": "black", "fit": "loose"},  # list field missing
    ]
    enc = vocab.encode(rows)
    assert set(enc) == {"colour", "fit", "tags"}
    assert all(t.dtype == torch.long for t in enc.values())
    assert enc["colour"].shape == (5, 1) and enc["fit"].shape == (5, 1)
    assert enc["colour"][:, 0].tolist() == [4, UNK, 3, 2, 2]
    assert enc["fit"][:, 0].tolist() == [3, UNK, 2, 2, 2]
    c, s, w, z = (vocab.index["tags"][t] for t in ("cotton", "summer", "wool", "zip"))
    assert enc["tags"].shape == (5, 4)  # padded to the longest list
    assert enc["tags"].tolist() == [
        [w, c, PAD, PAD],
        [UNK, PAD, PAD, PAD],
        [c, UNK, s, z],
        [z, PAD, PAD, PAD],
        [UNK, PAD, PAD, PAD],
    ]
    single = vocab.encode([{"colour": "red", "fit": "loose", "tags": ["wool"]}])
    assert single["colour"].shape == (1, 1) and single["tags"].shape == (1, 1)


def test_vocab_unknown_values(vocab):
    assert vocab.unknown_values({"colour": "red", "fit": "loose", "tags": ["wool"]}) == {}
    assert vocab.unknown_values({"colour": "purple", "tags": ["wool", "glitter", "sequins"]}) == {
        "colour": ["purple"],
        "tags": ["glitter", "sequins"],
    }
    assert vocab.unknown_values({"tags": "glitter"}) == {"tags": ["glitter"]}
    assert vocab.unknown_values({}) == {}  # missing fields are UNK but not "unknown values"


def test_vocab_round_trip(vocab):
    import json

    again = AttributeVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again.to_dict() == vocab.to_dict()
    assert again.index == vocab.index and again.fields == vocab.fields
    rows = [TRAIN[2], {"colour": "purple", "tags": ["glitter", "summer"]}]
    for f, t in vocab.encode(rows).items():
        assert torch.equal(again.encode(rows)[f], t)


# ---------------------------------------------------------------------------------------------- towers


def _tower(vocab: AttributeVocab, **kw) -> AttributeTower:
    torch.manual_seed(0)
    kw = {"field_dim": 8, "hidden_dim": 32, **kw}
    return AttributeTower({f: vocab.size(f) for f in vocab.fields}, vocab.list_fields, out_dim=16, **kw)


def test_attribute_tower_shape_and_norm(vocab):
    tower = _tower(vocab).eval()
    out = tower(vocab.encode([*TRAIN, {"colour": "purple"}]))
    assert out.shape == (4, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


def test_attribute_tower_list_pooling_order_invariant_and_ignores_pad(vocab):
    tower = _tower(vocab).eval()
    base = {"colour": "red", "fit": "loose"}
    with torch.no_grad():
        alone = tower(vocab.encode([{**base, "tags": ["cotton", "wool"]}]))
        swapped = tower(vocab.encode([{**base, "tags": ["wool", "cotton"]}]))
        enc = vocab.encode(
            [{**base, "tags": ["cotton", "wool"]}, {**base, "tags": ["summer", "wool", "zip", "cotton"]}]
        )
        assert enc["tags"][0].tolist()[2:] == [PAD, PAD]
        padded = tower(enc)
    torch.testing.assert_close(swapped, alone)
    torch.testing.assert_close(padded[:1], alone)
    assert not torch.allclose(padded[0], padded[1])
    # Mean, not sum: a list of one value repeated twice is the same as that value once.
    with torch.no_grad():
        once = tower(vocab.encode([{**base, "tags": ["wool"]}]))
        twice = tower(vocab.encode([{**base, "tags": ["wool", "wool"]}]))
    torch.testing.assert_close(once, twice)


def test_attribute_tower_field_dropout_only_in_training(vocab):
    enc = vocab.encode(TRAIN * 20)
    tower = _tower(vocab, dropout=0.0, field_dropout=0.99)
    tower.eval()
    with torch.no_grad():
        a, b = tower(enc), tower(enc)
    torch.testing.assert_close(a, b)  # deterministic in eval mode
    tower.train()
    torch.manual_seed(1)
    with torch.no_grad():
        t = tower(enc)
    assert not torch.allclose(t, a)
    # Nearly every field dropped → nearly every row is the all-UNK vector.
    with torch.no_grad():
        all_unk = tower.eval()(vocab.encode([{}]))
    assert (t - all_unk).abs().max(dim=1).values.lt(1e-6).float().mean() > 0.9
    # With no field dropout (and no MLP dropout) train mode gives the eval output: the difference above
    # comes from field dropout alone.
    calm = _tower(vocab, dropout=0.0, field_dropout=0.0)
    with torch.no_grad():
        torch.testing.assert_close(calm.train()(enc), calm.eval()(enc))


def test_attribute_tower_field_dropout_keeps_pad(vocab):
    tower = _tower(vocab, field_dropout=1.0)
    idx = torch.tensor([[3, 4, PAD], [2, PAD, PAD]])
    dropped = tower._drop_fields(idx)
    assert dropped.tolist() == [[UNK, UNK, PAD], [UNK, PAD, PAD]]


def test_attribute_tower_has_no_attention(vocab):
    banned = (
        nn.MultiheadAttention,
        nn.Transformer,
        nn.TransformerEncoder,
        nn.TransformerEncoderLayer,
        nn.TransformerDecoder,
        nn.TransformerDecoderLayer,
    )
    tower = _tower(vocab)
    assert not any(isinstance(m, banned) for m in tower.modules())
    assert {type(m) for m in tower.modules()} <= {
        AttributeTower,
        nn.ModuleDict,
        nn.Embedding,
        nn.Sequential,
        nn.Linear,
        nn.GELU,
        nn.Dropout,
    }
    assert all(e.padding_idx == PAD for e in tower.embeddings.values())


def test_text_tower_shape_and_norm():
    torch.manual_seed(0)
    tower = TextTower(in_dim=24, out_dim=16, hidden_dim=32).eval()
    out = tower(torch.randn(5, 24))
    assert out.shape == (5, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


# ---------------------------------------------------------------------------------------------- InfoNCE


def _embeddings(b: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return q, x


def _hand_ce(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log softmax at the diagonal, the softmax over the columns `keep` allows."""
    losses = []
    for i in range(len(logits)):
        row = logits[i][keep[i]]
        losses.append(-(logits[i, i] - torch.logsumexp(row, dim=0)))
    return torch.stack(losses).mean()


def test_infonce_distinct_groups_is_symmetric_cross_entropy():
    q, x = _embeddings()
    t = 0.07
    logits = q @ x.T / t
    everything = torch.ones(6, 6, dtype=torch.bool)
    expected = 0.5 * (_hand_ce(logits, everything) + _hand_ce(logits.T, everything))
    for positives in ("mask", "multi"):  # with no shared groups the two modes coincide
        loss = InfoNCELoss(temperature=t, positives=positives)
        torch.testing.assert_close(loss(q, x), expected)
        torch.testing.assert_close(loss(q, x, torch.arange(6) * 10), expected)
    target = torch.arange(6)
    torch.testing.assert_close(
        InfoNCELoss(t)(q, x), 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    )


def test_infonce_mask_removes_same_group_negatives():
    q, x = _embeddings()
    t = 0.05
    groups = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = q @ x.T / t
    same = groups[:, None] == groups[None, :]
    keep = ~same | torch.eye(6, dtype=torch.bool)  # own positive kept, other same-group items dropped
    expected = 0.5 * (_hand_ce(logits, keep) + _hand_ce(logits.T, keep.T))
    loss = InfoNCELoss(temperature=t, positives="mask")
    masked = loss(q, x, groups)
    torch.testing.assert_close(masked, expected)
    assert not torch.isclose(masked, loss(q, x))  # differs from treating them as negatives
    assert masked < loss(q, x)  # removing negatives can only lower each term


def test_infonce_multi_uses_uniform_soft_targets():
    q, x = _embeddings()
    t = 0.1
    groups = torch.tensor([3, 3, 1, 2, 2, 2])
    logits = q @ x.T / t
    same = (groups[:, None] == groups[None, :]).double()

    def direction(lg: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for i in range(len(lg)):
            logp = lg[i] - torch.logsumexp(lg[i], dim=0)
            members = s[i].nonzero().flatten()
            total = total - logp[members].sum() / len(members)
        return total / len(lg)

    expected = 0.5 * (direction(logits, same) + direction(logits.T, same.T))
    torch.testing.assert_close(InfoNCELoss(temperature=t, positives="multi")(q, x, groups), expected)


def test_relatedness_weighs_shared_values_by_their_information():
    vocab = AttributeVocab(["a", "b"], [], {"a": ["x", "y", "z"], "b": ["p", "q"]})
    attrs = vocab.encode([{"a": a, "b": b} for a, b in zip("xxxyyz", "ppqqqq")])
    info = value_information(attrs, vocab)
    assert torch.allclose(
        info["a"][2:], torch.tensor([math.log(2), math.log(3), math.log(6)])
    )  # p(x)=1/2, y 1/3, z 1/6
    r = relatedness(attrs, info)
    ix, _iy, iz, ip, iq = math.log(2), math.log(3), math.log(6), math.log(3), math.log(1.5)
    # Lin: information of the shared values over the information of all values of both products.
    assert r[0, 2].item() == pytest.approx(2 * ix / (2 * ix + ip + iq), rel=1e-5)  # share a=x (fairly rare)
    assert r[2, 5].item() == pytest.approx(2 * iq / (ix + iz + 2 * iq), rel=1e-5)  # share b=q (common): less related
    assert r[0, 2] > r[2, 5] and r[0, 5] == 0 and torch.allclose(r.diagonal(), torch.ones(6))
    mixed = relatedness(attrs, info, "a", 0.5)
    assert mixed[0, 2].item() == pytest.approx(0.5 * r[0, 2].item() + 0.5, rel=1e-5)
    assert mixed[2, 5].item() == pytest.approx(0.5 * r[2, 5].item(), rel=1e-5)
    # Only list-valued fields: nothing to grade by, each product is related to itself only.
    tags = AttributeVocab([], ["t"], {"t": ["u", "v"]})
    assert torch.equal(
        relatedness(tags.encode([{"t": ["u"]}, {"t": ["v"]}]), value_information(tags.encode([]), tags)), torch.eye(2)
    )
    # A field with one value carries no information: products equal on every field are still fully related.
    flat = AttributeVocab(["a"], [], {"a": ["x"]})
    assert torch.equal(
        relatedness(flat.encode([{"a": "x"}] * 3), value_information(flat.encode([{"a": "x"}] * 3), flat)),
        torch.ones(3, 3),
    )


def test_infonce_soft_targets_mix_in_graded_relatedness():
    q, x = _embeddings()
    t, soft = 0.1, 0.4
    groups = torch.tensor([3, 3, 1, 2, 2, 2])
    vocab = AttributeVocab(["a", "b"], [], {"a": ["x", "y", "z"], "b": ["p", "q"]})
    attrs = vocab.encode([{"a": a, "b": b} for a, b in zip("xxxyyz", "ppqqqq")])
    related = relatedness(attrs, value_information(attrs, vocab)) ** 2
    logits = q @ x.T / t
    same = (groups[:, None] == groups[None, :]).double()

    def direction(lg: torch.Tensor, s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        target = (1 - soft) * s / s.sum(dim=1, keepdim=True) + soft * r / r.sum(dim=1, keepdim=True)
        return -(target * torch.log_softmax(lg, dim=1)).sum(dim=1).mean()

    r = related.double()
    expected = 0.5 * (direction(logits, same, r) + direction(logits.T, same.T, r.T))
    loss = InfoNCELoss(temperature=t, positives="multi", soft=soft)
    torch.testing.assert_close(loss(q, x, groups, r), expected)
    assert not torch.isclose(loss(q, x, groups, r), loss(q, x, groups))  # without relatedness: plain multi-positive
    with pytest.raises(ValueError):
        InfoNCELoss(positives="mask", soft=0.3)


def test_soft_targets_with_masking_is_a_config_error():
    from lookalike.config import load_config
    from lookalike.errors import LookalikeError

    with pytest.raises(LookalikeError, match=r"train\.soft_targets > 0 .* needs train\.positives \'multi\'"):
        load_config(None, {"train.positives": "mask"})
    assert load_config(None, {"train.positives": "mask", "train.soft_targets": 0}).train.positives == "mask"


def test_infonce_rejects_unknown_positives():
    with pytest.raises(ValueError):
        InfoNCELoss(positives="soft")


def test_infonce_temperature_learnable_vs_fixed():
    q, x = _embeddings()
    learn = InfoNCELoss(temperature=0.07, learnable=True)
    assert [n for n, _ in learn.named_parameters()] == ["log_temperature"]
    learn(q.float(), x.float()).backward()
    assert learn.log_temperature.grad is not None and learn.log_temperature.grad.abs() > 0
    assert learn.temperature == pytest.approx(0.07)

    fixed = InfoNCELoss(temperature=0.07)
    assert list(fixed.parameters()) == []
    assert "log_temperature" in dict(fixed.named_buffers())
    assert "log_temperature" in fixed.state_dict()

    clamped = InfoNCELoss(temperature=0.001, min_temperature=0.01)
    assert clamped.temperature == pytest.approx(0.01)


def test_infonce_lower_for_aligned_embeddings():
    q, x = _embeddings(b=16, d=32)
    loss = InfoNCELoss(temperature=0.05)
    aligned, random = loss(x, x), loss(q, x)
    assert aligned < random
    assert aligned < 0.5 * torch.log(torch.tensor(16.0, dtype=torch.float64))  # well below chance (log B)
