"""The attribute tower the original spec asks for: embedding lookup per field, mean pooling for list
fields, concatenation, MLP, L2-normalised output. Deliberately no attention, transformer or graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.towers.vocab import PAD, UNK


class AttributeTower(nn.Module):
    def __init__(
        self,
        vocab_sizes: dict[str, int],
        list_fields: list[str],
        out_dim: int,
        field_dim: int = 64,
        hidden_dim: int = 1024,
        dropout: float = 0.1,
        field_dropout: float = 0.1,
        head: nn.Module | None = None,
    ):
        """`head` maps the concatenated field vectors to `out_dim` (default: the spec's two-layer MLP); other
        towers that pool fields the same way (the residual tower) give their own."""
        super().__init__()
        self.fields = list(vocab_sizes)
        self.list_fields = set(list_fields)
        self.field_dropout = field_dropout
        self.embeddings = nn.ModuleDict(
            {f: nn.Embedding(n, field_dim, padding_idx=PAD) for f, n in vocab_sizes.items()}
        )
        self.mlp = head or nn.Sequential(
            nn.Linear(field_dim * len(self.fields), hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def _drop_fields(self, idx: torch.Tensor) -> torch.Tensor:
        """Augmentation: with probability p a whole field becomes UNK, as if the user left it out."""
        mask = torch.rand(idx.shape[0], 1, device=idx.device) < self.field_dropout
        return torch.where(mask & (idx != PAD), torch.full_like(idx, UNK), idx)

    def field_vectors(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        parts = []
        for f in self.fields:
            idx = inputs[f]
            if self.training and self.field_dropout > 0:
                idx = self._drop_fields(idx)
            emb = self.embeddings[f](idx)  # (N, L, d); PAD rows are zero
            if f in self.list_fields:
                count = (idx != PAD).sum(dim=1, keepdim=True).clamp(min=1)
                parts.append(emb.sum(dim=1) / count)
            else:
                parts.append(emb[:, 0])
        return parts

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.mlp(torch.cat(self.field_vectors(inputs), dim=1)), dim=-1)
