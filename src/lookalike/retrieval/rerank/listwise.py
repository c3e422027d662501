"""Learned list-wise diversity reranker over the top-N candidates of first-stage search.

MMR trades relevance against redundancy with one fixed λ and raw cosine similarity. This reranker
reads the whole candidate list at once (a small self-attention encoder over the candidates, each
token built from the query, the candidate vector and its first-stage score) and produces, per
candidate, a relevance score and a low-rank correction to the pairwise cosine, and per query its own
trade-off weight. The list is then decoded greedily like MMR: each step picks the candidate maximising
relevance − λ(query) · max similarity to those already picked. Trained by `lookalike.training.listwise`
to maximise nDCG@10 + μ · intra-list diversity of the decoded list.

At initialisation it *is* MMR on standardised scores and raw cosine similarity (the learned parts
start at zero), so training starts from a sensible diversifier.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ListwiseReranker(nn.Module):
    def __init__(self, vector_dim: int, dim: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.0,
                 initial_lambda: float = 0.5, redundancy_dim: int = 32):
        super().__init__()
        self.vector_dim = vector_dim
        self.embed = nn.Linear(2 * vector_dim + 2, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.relevance = nn.Linear(dim, 1)
        self.redundancy = nn.Linear(dim, redundancy_dim)
        self.trade_off = nn.Linear(dim, 1)
        for head in (self.relevance, self.redundancy, self.trade_off):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.score_scale = nn.Parameter(torch.tensor(1.0))
        self.lambda_bias = nn.Parameter(torch.tensor(float(np.log(np.expm1(initial_lambda)))))

    def forward(self, query: torch.Tensor, candidates: torch.Tensor, scores: torch.Tensor):
        """query (B, D), candidates (B, N, D) unit rows, scores (B, N) first-stage similarities →
        relevance (B, N), pairwise similarity (B, N, N), trade-off λ (B,)."""
        z = (scores - scores.mean(dim=1, keepdim=True)) / scores.std(dim=1, keepdim=True).clamp(min=1e-6)
        top_gap = scores - scores.max(dim=1, keepdim=True).values
        tokens = self.embed(torch.cat([candidates, candidates * query[:, None], z[..., None], top_gap[..., None]], dim=-1))
        h = self.norm(self.encoder(tokens))
        relevance = self.score_scale * z + self.relevance(h).squeeze(-1)
        keys = self.redundancy(h)  # a learned low-rank correction to the raw cosine (cheap to train)
        similarity = candidates @ candidates.transpose(1, 2) + keys @ keys.transpose(1, 2)
        lam = F.softplus(self.lambda_bias + self.trade_off(h.mean(dim=1)).squeeze(-1))
        return relevance, similarity, lam


def decode(relevance: torch.Tensor, similarity: torch.Tensor, lam: torch.Tensor, k: int, sample: bool = False,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy (or Plackett-Luce sampled) MMR-style decoding → (B, k) candidate indices and (B,) log-probability."""
    B, N = relevance.shape
    k = min(k, N)
    available = torch.ones(B, N, dtype=torch.bool, device=relevance.device)
    max_sim = torch.zeros(B, N, device=relevance.device)
    rows = torch.arange(B, device=relevance.device)
    picks, log_prob = [], torch.zeros(B, device=relevance.device)
    for t in range(k):
        logits = relevance - lam[:, None] * max_sim
        logits = logits.masked_fill(~available, float("-inf"))
        if sample:
            log_p = F.log_softmax(logits, dim=1)
            j = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
            log_prob = log_prob + log_p[rows, j]
        else:
            j = logits.argmax(dim=1)
        picks.append(j)
        available = available.clone()
        available[rows, j] = False
        max_sim = similarity[rows, j] if t == 0 else torch.maximum(max_sim, similarity[rows, j])
    return torch.stack(picks, dim=1), log_prob


@torch.inference_mode()
def rerank(model: ListwiseReranker, queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray, scores: np.ndarray,
           k: int = 10, batch_size: int = 256) -> np.ndarray:
    """(n, k) positions into each query's candidate list, reranked. candidates: (n, N) gallery rows of
    each query's first-stage list; scores: (n, N) their first-stage similarities."""
    model.eval()
    out = []
    for s in range(0, len(queries), batch_size):
        sl = slice(s, s + batch_size)
        rel, sim, lam = model(torch.from_numpy(np.ascontiguousarray(queries[sl], np.float32)),
                              torch.from_numpy(np.ascontiguousarray(gallery[candidates[sl]], np.float32)),
                              torch.from_numpy(np.ascontiguousarray(scores[sl], np.float32)))
        out.append(decode(rel, sim, lam, k)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)
