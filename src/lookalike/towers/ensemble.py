"""An ensemble of towers that map into one image space: the normalised mean of their unit query vectors.

Averaging unit vectors (not scores) keeps an ensemble a plain tower: it yields one query vector, so
evaluation, search, the hubness correction and serving treat it like any other checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleTower(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two towers")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        vectors = torch.stack([F.normalize(m(inputs), dim=-1) for m in self.members])
        return F.normalize(vectors.mean(dim=0), dim=-1)
