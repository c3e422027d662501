"""Learned list-wise diversity reranker over the top-N candidates of first-stage search.

MMR trades relevance against redundancy with one fixed λ and the *maximum* cosine to the items
already picked. This reranker reads the whole candidate list at once (a small self-attention
encoder) and produces, per candidate, a relevance correction, and per query and list position its
own trade-off weight. The list is decoded greedily: step t picks the candidate maximising
relevance − λ_t(query) · mean cosine to the items already picked. The mean (not MMR's max) is what
intra-list diversity averages, so the decoder spends its redundancy penalty where the metric counts
it. Trained by `lookalike.training.listwise`.

Each candidate's token is built from list-relative features only (standardised first-stage score,
gap to the top score, rank, cosine to the top candidates, local density), never from the raw item
vectors: with raw vectors the encoder memorised which gallery items were relevant (a validation gain
that turned into a loss on the test gallery, in an earlier study no benchmark repeats), with list-relative
features it transfers to an unseen gallery. At initialisation it is mean-redundancy MMR on standardised
scores with one λ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.modelfile import read_model_file, save_atomic

N_FEATURES = 9
RERANKER_FORMAT = "lookalike-listwise/1"


def list_features(scores: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """(B, N, N_FEATURES) list-relative features of each candidate; similarity (B, N, N) cosines."""
    B, N = scores.shape
    z = (scores - scores.mean(dim=1, keepdim=True)) / scores.std(dim=1, keepdim=True).clamp(min=1e-6)
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1).float()

    def mean_sim_to_top(m: int) -> torch.Tensor:
        top = (rank < m).float()  # (B, N)
        return (similarity * top[:, None, :]).sum(-1) / min(m, N)

    return torch.stack(
        [
            z,
            scores - scores.max(dim=1, keepdim=True).values,
            rank / N,
            mean_sim_to_top(1),
            mean_sim_to_top(3),
            mean_sim_to_top(10),
            similarity.mean(-1),
            (similarity > 0.9).float().mean(-1),
            scores.std(dim=1, keepdim=True).expand(B, N),
        ],
        dim=-1,
    )


class ListwiseReranker(nn.Module):
    def __init__(self, k: int = 10, dim: int = 32, heads: int = 4, layers: int = 1, initial_lambda: float = 4.0):
        super().__init__()
        self.k, self.dim, self.heads, self.layers = k, dim, heads, layers
        self.embed = nn.Linear(N_FEATURES, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, 0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.relevance = nn.Linear(dim, 1)
        self.trade_off = nn.Linear(dim, k)  # per query and list position
        for head in (self.relevance, self.trade_off):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.lambda_bias = nn.Parameter(torch.tensor(float(np.log(np.expm1(initial_lambda)))))
        # relevance → log-odds of being relevant, for the supervised loss only (decoding is scale-sensitive,
        # so the loss must not rescale the relevance itself)
        self.calibration = nn.Linear(1, 1)
        # one multiplier of every λ, set on validation after training to place the operating point
        self.lambda_scale: torch.Tensor  # a buffer: saved with the weights, never trained
        self.register_buffer("lambda_scale", torch.tensor(1.0))

    def set_lambda(self, lam: float) -> None:
        with torch.no_grad():
            self.lambda_bias.fill_(float(np.log(np.expm1(lam))))

    def forward(self, candidates: torch.Tensor, scores: torch.Tensor):
        """candidates (B, N, D) unit rows, scores (B, N) first-stage similarities →
        relevance (B, N), pairwise cosine (B, N, N), trade-off λ (B, k)."""
        similarity = candidates @ candidates.transpose(1, 2)
        x = list_features(scores, similarity)
        h = self.norm(self.encoder(self.embed(x)))
        relevance = x[..., 0] + self.relevance(h).squeeze(-1)
        lam = self.lambda_scale * F.softplus(self.lambda_bias + self.trade_off(h.mean(dim=1)))
        return relevance, similarity, lam


def decode(
    relevance: torch.Tensor,
    similarity: torch.Tensor,
    lam: torch.Tensor,
    k: int,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy (or Plackett-Luce sampled) decoding → (B, k) candidate indices and (B,) log-probability.
    Step t scores relevance − λ[:, t] · mean cosine to the candidates already picked."""
    B, N = relevance.shape
    k = min(k, N)
    available = torch.ones(B, N, dtype=torch.bool, device=relevance.device)
    redundancy = torch.zeros(B, N, device=relevance.device)
    rows = torch.arange(B, device=relevance.device)
    picks, log_prob = [], torch.zeros(B, device=relevance.device)
    for t in range(k):
        logits = (relevance - lam[:, t, None] * redundancy).masked_fill(~available, float("-inf"))
        if sample:
            log_p = F.log_softmax(logits, dim=1)
            j = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
            log_prob = log_prob + log_p[rows, j]
        else:
            j = logits.argmax(dim=1)
        picks.append(j)
        available = available.clone()
        available[rows, j] = False
        redundancy = (redundancy * t + similarity[rows, j]) / (t + 1)
    return torch.stack(picks, dim=1), log_prob


@torch.inference_mode()
def rerank(
    model: ListwiseReranker, gallery: np.ndarray, candidates: np.ndarray, scores: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """(n, k) positions into each query's candidate list, reranked. candidates: (n, N) gallery rows of
    each query's first-stage list; scores: (n, N) their first-stage similarities."""
    model.eval()
    out = []
    for s in range(0, len(candidates), batch_size):
        sl = slice(s, s + batch_size)
        rel, sim, lam = model(
            torch.from_numpy(np.ascontiguousarray(gallery[candidates[sl]], np.float32)),
            torch.from_numpy(np.ascontiguousarray(scores[sl], np.float32)),
        )
        out.append(decode(rel, sim, lam, model.k)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, model.k), np.int64)


@torch.inference_mode()
def rerank_list(model: ListwiseReranker, vectors: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of k of one list's N candidates (unit `vectors`, first-stage `scores`, best first), reranked: the
    reranker decodes its first min(k, model.k) picks; any further ones follow in first-stage order (the
    reranker's trade-off weights exist for its own k positions only)."""
    n = len(scores)
    if n < 2:
        return np.arange(min(k, n))
    model.eval()
    rel, sim, lam = model(
        torch.from_numpy(np.ascontiguousarray(vectors[None], np.float32)),
        torch.from_numpy(np.ascontiguousarray(np.asarray(scores)[None], np.float32)),
    )
    picks = decode(rel, sim, lam, min(k, model.k, n))[0][0].numpy()
    rest = np.setdiff1d(np.arange(n), picks, assume_unique=True)  # ascending = first-stage order
    return np.concatenate([picks, rest])[:k].astype(np.int64)


def save_reranker(model: ListwiseReranker, path: str | Path, **extra) -> None:
    """Written atomically (a temp file renamed over `path`): a served reranker is never half a file."""
    payload = {
        "format": RERANKER_FORMAT,
        "k": model.k,
        "dim": model.dim,
        "heads": model.heads,
        "layers": model.layers,
        "state_dict": model.state_dict(),
        **extra,
    }
    save_atomic(payload, Path(path))


def load_reranker(path: str | Path) -> ListwiseReranker:
    """A reranker file (`lookalike train-reranker`) → the reranker in eval mode; a missing or foreign file is a
    one-line error naming it."""
    payload = read_model_file(path, RERANKER_FORMAT, "reranker model file", "a list-wise reranker file")
    try:
        model = ListwiseReranker(payload["k"], payload["dim"], payload["heads"], payload["layers"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise LookalikeError(f"reranker model file {path} is damaged: {str(e).splitlines()[0]}") from None
    return model.eval()
