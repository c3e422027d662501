"""Stage-2 adapter: a small network from the 512-d image space to a compact vector (128-d default).

One adapter maps both sides (tower queries and gallery images), so the compact index is just the
adapted gallery. It is a linear map started from the gallery's principal directions plus a residual
MLP whose last layer starts at zero: before training it *is* PCA to `out_dim`, and metric learning
(triplet / multi-similarity with hierarchical hard negatives) only has to improve on that.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.modelfile import read_model_file

ADAPTER_FORMAT = "lookalike-adapter/1"


class Adapter(nn.Module):
    def __init__(self, in_dim: int = 512, out_dim: int = 128, hidden_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        hidden, last = nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, out_dim)
        self.mlp = nn.Sequential(hidden, nn.GELU(), nn.Dropout(dropout), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @torch.no_grad()
    def init_pca(self, vectors: np.ndarray) -> Adapter:
        """Start the linear part at the top-`out_dim` principal directions of `vectors` (unit rows)."""
        x = np.asarray(vectors, np.float64)
        evals, evecs = np.linalg.eigh(x.T @ x)
        top = evecs[:, np.argsort(evals)[::-1][: self.out_dim]].T
        self.linear.weight.copy_(torch.from_numpy(top.astype(np.float32)))
        return self

    def fingerprint(self) -> str:
        """A digest of the weights (16 hex digits): a store records it, so a query mapped by another adapter (or
        by none) is refused rather than compared with vectors of a different space."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x) + self.mlp(x), dim=-1)

    @torch.inference_mode()
    def encode(self, vectors: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        was = self.training
        self.eval()
        out = (
            np.concatenate(
                [
                    self(torch.from_numpy(np.ascontiguousarray(vectors[s : s + batch_size], np.float32))).numpy()
                    for s in range(0, len(vectors), batch_size)
                ]
            )
            if len(vectors)
            else np.zeros((0, self.out_dim), np.float32)
        )
        self.train(was)
        return out


def load_adapter(path: str | Path) -> tuple[Adapter, dict]:
    """An adapter file (`lookalike train-adapter`, or the tower study's adapter.pt) → the adapter, in eval mode,
    and its payload. A missing or foreign file is a one-line error naming it."""
    payload = read_model_file(path, ADAPTER_FORMAT, "adapter file", "an adapter file")
    cfg = payload["config"]
    try:
        adapter = Adapter(payload["in_dim"], cfg["out_dim"], cfg["hidden_dim"], cfg["dropout"])
        adapter.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise LookalikeError(f"adapter file {path} is damaged: {str(e).splitlines()[0]}") from None
    return adapter.eval(), payload
