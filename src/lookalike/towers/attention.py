"""Field self-attention tower: every field value is a token (list fields give one per value), tokens of
different fields attend to each other through a small transformer encoder, and the masked mean of the
encoded tokens is projected into the image space. Where the MLP tower concatenates fields blindly, here an
interaction (this colour on this article type) can be learnt explicitly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.towers.vocab import PAD, UNK


class FieldAttentionTower(nn.Module):
    def __init__(
        self,
        vocab_sizes: dict[str, int],
        list_fields: list[str],
        out_dim: int,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
        field_dropout: float = 0.1,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the attention dim {dim} must be a multiple of the heads {heads}")
        self.fields = list(vocab_sizes)
        self.list_fields = set(list_fields)
        self.field_dropout = field_dropout
        self.values = nn.ModuleDict({f: nn.Embedding(n, dim, padding_idx=PAD) for f, n in vocab_sizes.items()})
        self.field_embedding = nn.Embedding(len(self.fields), dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))

    def _drop_fields(self, idx: torch.Tensor) -> torch.Tensor:
        """Augmentation, as in the other towers: with probability p a whole field becomes UNK."""
        mask = torch.rand(idx.shape[0], 1, device=idx.device) < self.field_dropout
        return torch.where(mask & (idx != PAD), torch.full_like(idx, UNK), idx)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        vecs, pads = [], []
        for i, f in enumerate(self.fields):
            idx = inputs[f]
            if self.training and self.field_dropout > 0:
                idx = self._drop_fields(idx)
            vecs.append(self.values[f](idx) + self.field_embedding.weight[i])
            pads.append(idx == PAD)
        tokens, pad = torch.cat(vecs, dim=1), torch.cat(pads, dim=1)
        # A product whose every token is padding (all list fields empty, no single field) would make attention
        # NaN: let its first token through.
        pad = pad.clone()
        pad[pad.all(dim=1), 0] = False
        encoded = self.encoder(tokens, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(encoded.dtype)
        pooled = (encoded * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return F.normalize(self.head(pooled), dim=-1)
