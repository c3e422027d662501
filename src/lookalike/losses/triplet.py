"""Triplet loss on cosine distance with in-batch mining (FaceNet, Schroff et al. 2015).

Every embedding in the batch is an anchor; positives share its label. `mining="semi-hard"` picks, per
anchor and positive, the closest negative that is still farther than the positive (FaceNet's
semi-hard), falling back to the hardest negative when none is; `"hardest"` is batch-hard (Hermans et
al. 2017: hardest positive against hardest negative per anchor).
"""

from __future__ import annotations

import torch
from torch import nn


class TripletLoss(nn.Module):
    def __init__(self, margin: float = 0.2, mining: str = "semi-hard"):
        super().__init__()
        if mining not in ("semi-hard", "hardest"):
            raise ValueError(f"mining must be 'semi-hard' or 'hardest', got {mining!r}")
        self.margin, self.mining = margin, mining

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        candidates: torch.Tensor | None = None,
        candidate_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """embeddings: (B, D) L2-normalised anchors; labels: (B,) ints, equal = same kind of product.
        Positives and negatives come from the batch itself, or from `candidates` (e.g. anchors = queries,
        candidates = images) with their `candidate_labels`."""
        pos, neg, sim = _pairs(embeddings, labels, candidates, candidate_labels)
        dist = 1 - sim
        inf = torch.tensor(float("inf"), device=dist.device)
        if self.mining == "hardest":
            d_ap = torch.where(pos, dist, -inf).max(dim=1).values
            d_an = torch.where(neg, dist, inf).min(dim=1).values
            valid = pos.any(dim=1) & neg.any(dim=1)
            return torch.relu(d_ap - d_an + self.margin)[valid].mean() if valid.any() else dist.sum() * 0
        a, p = pos.nonzero(as_tuple=True)  # every (anchor, positive) pair
        d_ap = dist[a, p]
        d_neg = torch.where(neg[a], dist[a], inf)  # (pairs, B)
        semi = torch.where(d_neg > d_ap[:, None], d_neg, inf).min(dim=1).values
        hardest = d_neg.min(dim=1).values
        d_an = torch.where(torch.isinf(semi), hardest, semi)
        valid = ~torch.isinf(d_an)
        return torch.relu(d_ap - d_an + self.margin)[valid].mean() if valid.any() else dist.sum() * 0


def _pairs(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    candidates: torch.Tensor | None,
    candidate_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive mask, negative mask, cosine similarity) of anchors × candidates (the batch itself by default)."""
    if candidates is None:
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return same & ~eye, ~same, embeddings @ embeddings.T
    if candidate_labels is None:
        raise ValueError("candidates need their labels (candidate_labels)")
    same = labels[:, None] == candidate_labels[None, :]
    return same, ~same, embeddings @ candidates.T
