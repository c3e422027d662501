"""Residual MLP tower: the MLP tower's field embeddings and pooling, then a deeper head of pre-norm residual
blocks (depth, activation and normalisation chosen in the config), so depth can grow without the
optimisation trouble of a plain deep MLP."""

from __future__ import annotations

import torch
from torch import nn

from lookalike.towers.attribute import AttributeTower

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
NORMS: dict[str, type[nn.Module]] = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class ResidualBlock(nn.Module):
    """x + Linear(Dropout(act(Linear(norm(x))))): pre-norm, so the identity path stays clean."""

    def __init__(self, dim: int, activation: str, norm: str, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            NORMS[norm](dim), nn.Linear(dim, dim), ACTIVATIONS[activation](), nn.Dropout(dropout), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualHead(nn.Sequential):
    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, depth: int, activation: str, norm: str, dropout: float
    ):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            *[ResidualBlock(hidden_dim, activation, norm, dropout) for _ in range(depth)],
            NORMS[norm](hidden_dim),
            ACTIVATIONS[activation](),
            nn.Linear(hidden_dim, out_dim),
        )


class ResidualTower(AttributeTower):
    def __init__(
        self,
        vocab_sizes: dict[str, int],
        list_fields: list[str],
        out_dim: int,
        field_dim: int = 64,
        hidden_dim: int = 512,
        depth: int = 3,
        activation: str = "gelu",
        norm: str = "layer",
        dropout: float = 0.1,
        field_dropout: float = 0.1,
    ):
        if activation not in ACTIVATIONS or norm not in NORMS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)} and norm one of {list(NORMS)}")
        head = ResidualHead(field_dim * len(vocab_sizes), hidden_dim, out_dim, depth, activation, norm, dropout)
        super().__init__(vocab_sizes, list_fields, out_dim, field_dim, hidden_dim, dropout, field_dropout, head=head)
