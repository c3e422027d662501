"""Text tower: the frozen sentence encoder's vector through a small trainable head into the image space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextTower(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, sentence_vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(sentence_vectors), dim=-1)
