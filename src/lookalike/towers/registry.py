"""Attribute towers by name (`tower.name` in the run config). The MLP tower is the default the
original spec demands; the coarse-to-fine tower competes with it (benchmarks/towers.py)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lookalike.config import TowerConfig
from lookalike.errors import LookalikeError
from lookalike.towers.attention import FieldAttentionTower
from lookalike.towers.attribute import AttributeTower
from lookalike.towers.coarse_to_fine import CoarseToFineTower
from lookalike.towers.ensemble import EnsembleTower
from lookalike.towers.residual import ResidualTower
from lookalike.towers.text import TextTower
from lookalike.towers.vocab import AttributeVocab


def _mlp(t: TowerConfig, vocab: AttributeVocab, out_dim: int) -> nn.Module:
    return AttributeTower(
        {f: vocab.size(f) for f in vocab.fields},
        vocab.list_fields,
        out_dim,
        t.field_dim,
        t.hidden_dim,
        t.dropout,
        t.field_dropout,
    )


def _coarse_to_fine(t: TowerConfig, vocab: AttributeVocab, out_dim: int) -> nn.Module:
    c = t.coarse_to_fine
    unknown = [f for f in c.standard_fields or [] if f not in vocab.fields]
    if unknown:
        raise LookalikeError(f"tower.coarse_to_fine.standard_fields {unknown} are not attribute fields {vocab.fields}")
    return CoarseToFineTower(
        {f: vocab.size(f) for f in vocab.fields},
        vocab.list_fields,
        out_dim,
        c.standard_fields,
        t.field_dim,
        c.heads,
        c.layers,
        c.pyramid_dim,
        c.pyramid_blocks,
        t.dropout,
        t.field_dropout,
    )


def _residual(t: TowerConfig, vocab: AttributeVocab, out_dim: int) -> nn.Module:
    r = t.residual
    return ResidualTower(
        {f: vocab.size(f) for f in vocab.fields},
        vocab.list_fields,
        out_dim,
        t.field_dim,
        t.hidden_dim,
        r.depth,
        r.activation,
        r.norm,
        t.dropout,
        t.field_dropout,
    )


def _attention(t: TowerConfig, vocab: AttributeVocab, out_dim: int) -> nn.Module:
    a = t.attention
    return FieldAttentionTower(
        {f: vocab.size(f) for f in vocab.fields},
        vocab.list_fields,
        out_dim,
        a.dim,
        a.heads,
        a.layers,
        t.dropout,
        t.field_dropout,
    )


ATTRIBUTE_TOWERS: dict[str, Callable[[TowerConfig, AttributeVocab, int], nn.Module]] = {
    "mlp": _mlp,
    "coarse-to-fine": _coarse_to_fine,
    "residual": _residual,
    "attention": _attention,
    "ensemble": lambda t, vocab, out_dim: EnsembleTower([create_attribute_tower(m, vocab, out_dim) for m in t.members]),
}


# The towers one run trains from its config (what `lookalike tune` searches): all but the ensemble, which averages
# towers trained already (`lookalike ensemble`).
TRAINABLE_TOWERS = [name for name in ATTRIBUTE_TOWERS if name != "ensemble"]


def create_attribute_tower(t: TowerConfig, vocab: AttributeVocab, out_dim: int) -> nn.Module:
    return ATTRIBUTE_TOWERS[t.name](t, vocab, out_dim)


def create_text_tower(t: TowerConfig, text_dim: int, out_dim: int) -> nn.Module:
    """The text tower (one per ensemble member in an ensemble)."""
    if t.name == "ensemble":
        return EnsembleTower([create_text_tower(m, text_dim, out_dim) for m in t.members])
    return TextTower(text_dim, out_dim, t.text_hidden_dim, t.dropout)
