"""Multi-similarity loss with its pair mining (Wang et al., CVPR 2019), the alternative to triplets.

It weighs every informative positive and negative pair of an anchor at once (soft-plus of the
summed exponentials) instead of one triplet, which uses more of each hierarchical batch.
"""

from __future__ import annotations

import torch
from torch import nn

from lookalike.losses.triplet import _pairs


class MultiSimilarityLoss(nn.Module):
    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, epsilon: float = 0.1):
        super().__init__()
        self.alpha, self.beta, self.base, self.epsilon = alpha, beta, base, epsilon

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        candidates: torch.Tensor | None = None,
        candidate_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """embeddings: (B, D) L2-normalised anchors; labels: (B,) ints; optional candidates as in TripletLoss."""
        pos, neg, sim = _pairs(embeddings, labels, candidates, candidate_labels)
        big = torch.tensor(float("inf"), device=sim.device)
        # Mining: keep negatives harder than the easiest positive + ε, positives harder than the hardest negative − ε.
        min_pos = torch.where(pos, sim, big).min(dim=1, keepdim=True).values
        max_neg = torch.where(neg, sim, -big).max(dim=1, keepdim=True).values
        neg_keep = neg & (sim + self.epsilon > min_pos)
        pos_keep = pos & (sim - self.epsilon < max_neg)
        pos_term = torch.log1p((torch.exp(-self.alpha * (sim - self.base)) * pos_keep).sum(dim=1)) / self.alpha
        neg_term = torch.log1p((torch.exp(self.beta * (sim - self.base)) * neg_keep).sum(dim=1)) / self.beta
        valid = pos_keep.any(dim=1) | neg_keep.any(dim=1)
        return (pos_term + neg_term)[valid].mean() if valid.any() else sim.sum() * 0
