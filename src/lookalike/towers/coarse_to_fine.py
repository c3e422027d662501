"""Coarse-to-fine attribute tower: the essence of a product comes from its *standard* fields (category,
colour), and detail fields (*reinforced*: material, print, season …) are absorbed only as far as the
standard ones attend to them.

Every field value is a token of one shared embedding table (plus a learned field embedding); list
fields give one token per value, masked where padded. Each group has its own self-attention encoder;
cross-attention takes standard tokens as queries and reinforced tokens as keys/values (residual +
LayerNorm); the standard tokens are mean-pooled and a residual pyramid head (expand, residual blocks,
project) maps the result into the image space, L2-normalised like the MLP tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.towers.vocab import PAD, UNK


def default_standard_fields(fields: list[str]) -> list[str]:
    """Schemas list the essential fields first: the first two-thirds (rounded up) are standard."""
    return fields[: max(1, -(-2 * len(fields) // 3))]


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CoarseToFineTower(nn.Module):
    def __init__(
        self,
        vocab_sizes: dict[str, int],
        list_fields: list[str],
        out_dim: int,
        standard_fields: list[str] | None = None,
        embed_dim: int = 64,
        heads: int = 4,
        layers: int = 1,
        pyramid_dim: int = 256,
        pyramid_blocks: int = 2,
        dropout: float = 0.1,
        field_dropout: float = 0.1,
    ):
        super().__init__()
        self.fields = list(vocab_sizes)
        standard = list(standard_fields) if standard_fields is not None else default_standard_fields(self.fields)
        unknown = [f for f in standard if f not in vocab_sizes]
        if unknown:
            raise ValueError(f"standard fields not among the attribute fields {self.fields}: {unknown}")
        if not standard:
            raise ValueError("the coarse-to-fine tower needs at least one standard field")
        self.standard = [f for f in self.fields if f in standard]
        self.reinforced = [f for f in self.fields if f not in standard]
        self.list_fields = set(list_fields)
        self.field_dropout = field_dropout
        offsets, total = {}, 0
        for f, n in vocab_sizes.items():
            offsets[f], total = total, total + n
        self.offsets = offsets
        self.values = nn.Embedding(total, embed_dim)  # one table shared by all fields, each at its offset
        self.field_embedding = nn.Embedding(len(self.fields), embed_dim)

        def encoder() -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(
                embed_dim, heads, 4 * embed_dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.standard_encoder = encoder()
        self.reinforced_encoder = encoder() if self.reinforced else None
        self.cross = (
            nn.MultiheadAttention(embed_dim, heads, dropout=dropout, batch_first=True) if self.reinforced else None
        )
        self.cross_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Sequential(
            nn.Linear(embed_dim, pyramid_dim),
            nn.GELU(),
            *[ResidualBlock(pyramid_dim, dropout) for _ in range(pyramid_blocks)],
            nn.LayerNorm(pyramid_dim),
            nn.Linear(pyramid_dim, out_dim),
        )

    def _drop_fields(self, idx: torch.Tensor) -> torch.Tensor:
        """Augmentation, as in the MLP tower: with probability p a whole field becomes UNK."""
        mask = torch.rand(idx.shape[0], 1, device=idx.device) < self.field_dropout
        return torch.where(mask & (idx != PAD), torch.full_like(idx, UNK), idx)

    def _tokens(self, inputs: dict[str, torch.Tensor], fields: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, d) token vectors and (N, T) True where a token is padding."""
        vecs, pads = [], []
        for f in fields:
            idx = inputs[f]
            if self.training and self.field_dropout > 0:
                idx = self._drop_fields(idx)
            field_id = torch.full_like(idx, self.fields.index(f))
            vecs.append(self.values(idx + self.offsets[f]) + self.field_embedding(field_id))
            pads.append(idx == PAD)
        return torch.cat(vecs, dim=1), torch.cat(pads, dim=1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        std, std_pad = self._tokens(inputs, self.standard)
        std = self.standard_encoder(std, src_key_padding_mask=std_pad)
        if self.reinforced_encoder is not None and self.cross is not None:  # built when there are reinforced fields
            rei, rei_pad = self._tokens(inputs, self.reinforced)
            rei = self.reinforced_encoder(rei, src_key_padding_mask=rei_pad)
            attended, _ = self.cross(std, rei, rei, key_padding_mask=rei_pad, need_weights=False)
            std = self.cross_norm(std + attended)
        keep = (~std_pad).unsqueeze(-1).float()
        pooled = (std * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return F.normalize(self.head(pooled), dim=-1)
