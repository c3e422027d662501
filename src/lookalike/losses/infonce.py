"""Symmetric InfoNCE with in-batch negatives, aware of products that share all attribute values.

Two products with identical attributes have indistinguishable queries, so treating one's image as
the other's negative would punish the tower for something it cannot know. `positives="mask"` drops
such pairs from the softmax; `positives="multi"` makes them all targets (uniform soft labels).
With `soft` > 0, that share of each target goes instead to graded relatedness (e.g. the fraction of
attribute values two products share): a query is pulled toward photos of *similar* products too, which
is what coarse relevance (same article type, same colour) rewards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    def __init__(
        self,
        temperature: float = 0.05,
        learnable: bool = False,
        positives: str = "mask",
        min_temperature: float = 0.01,
        soft: float = 0.0,
    ):
        super().__init__()
        if positives not in ("mask", "multi"):
            raise ValueError(f"positives must be 'mask' or 'multi', got {positives!r}")
        if soft and positives != "multi":
            raise ValueError("soft targets need positives='multi'")
        self.positives = positives
        self.soft = soft
        self.min_log_t = math.log(min_temperature)
        log_t = torch.tensor(math.log(temperature))
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.detach().clamp(min=self.min_log_t).exp())

    def _direction(self, logits: torch.Tensor, same: torch.Tensor, related: torch.Tensor | None) -> torch.Tensor:
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        if self.positives == "mask":
            logits = logits.masked_fill(same & ~eye, float("-inf"))
            return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
        target = same.float() / same.sum(dim=1, keepdim=True)
        if related is not None:
            target = (1 - self.soft) * target + self.soft * related / related.sum(dim=1, keepdim=True)
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def forward(
        self,
        queries: torch.Tensor,
        images: torch.Tensor,
        groups: torch.Tensor | None = None,
        related: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries, images: (B, D) L2-normalised, row i of each describing product i;
        groups: (B,) ids, equal for products with identical attributes (None: all distinct);
        related: (B, B) ≥ 0 graded relatedness (diagonal > 0) that receives `soft` of each target ("multi" only)."""
        t = self.log_temperature.clamp(min=self.min_log_t).exp()
        logits = queries @ images.T / t
        if groups is None:
            groups = torch.arange(len(queries), device=queries.device)
        same = groups[:, None] == groups[None, :]
        if related is not None and self.soft == 0:
            related = None
        return 0.5 * (
            self._direction(logits, same, related)
            + self._direction(logits.T, same.T, None if related is None else related.T)
        )
