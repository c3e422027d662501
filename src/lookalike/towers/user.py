"""The user tower: a customer's history (vectors in the image space, with event types and ages) → one query there.

Each event is its vector plus an embedding of its type and of its age (log2 buckets of days before the newest event,
or of positions when the history has no times). A learned query, offset by the history's mean, attends over the
events (attention pooling); a residual linear map follows and the result is unit-normalised. Trained with InfoNCE on
next-item prediction (training/user_tower.py); served as `profile=tower` (`serve --user-tower U.pt`). Adding the
mean to the pooled vector (so that an untrained tower answered as the mean profile) was tried: the mean then
dominated, and the tower no longer learnt the recency that tests/test_user_tower.py's sessions reward.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError
from lookalike.modelfile import save_atomic

TYPES = ("impression", "view", "click", "cart", "purchase", "query")
AGE_BUCKETS = 12


def age_buckets(times: list[float | None]) -> np.ndarray:
    """Each event's age bucket: floor(log2(1 + days before the newest event)), or of positions before the last
    event when some time is unknown; capped at AGE_BUCKETS − 1."""
    n = len(times)
    if n and all(t is not None for t in times):
        t = np.array(times, np.float64)
        age = (t.max() - t) / 86400.0
    else:
        age = (n - 1 - np.arange(n)).astype(np.float64)
    return np.minimum(np.floor(np.log2(1.0 + np.maximum(age, 0.0))), AGE_BUCKETS - 1).astype(np.int64)


class UserTower(nn.Module):
    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise LookalikeError(f"the user tower's width {dim} must be a multiple of its {heads} heads")
        self.dim, self.heads = dim, heads
        self.meta: dict = {}  # what it was trained on (saved with it)
        self.types = nn.Embedding(len(TYPES), dim)
        self.ages = nn.Embedding(AGE_BUCKETS, dim)
        for e in (self.types, self.ages):
            nn.init.normal_(e.weight, std=0.02)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, vectors: torch.Tensor, types: torch.Tensor, ages: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """vectors (B, L, D), types and ages (B, L) ints, mask (B, L) True where an event is → (B, D) unit."""
        m = mask.unsqueeze(-1).float()
        mean = (vectors * m).sum(1) / m.sum(1).clamp(min=1.0)
        x = vectors + self.types(types) + self.ages(ages)
        pooled, _ = self.attn(self.query + mean.unsqueeze(1), x, x, key_padding_mask=~mask, need_weights=False)
        h = pooled[:, 0]
        return F.normalize(h + self.out(h), dim=-1)

    @torch.no_grad()
    def encode(self, vectors: np.ndarray, types: list[str], times: list[float | None]) -> np.ndarray:
        """One history → its query vector (float32, unit)."""
        unknown = sorted(set(types) - set(TYPES))
        if unknown:
            raise LookalikeError(f"the user tower knows event types {list(TYPES)}, not {unknown}")
        self.eval()
        v = torch.as_tensor(np.asarray(vectors, np.float32))[None]
        t = torch.tensor([[TYPES.index(x) for x in types]])
        a = torch.as_tensor(age_buckets(times))[None]
        return self(v, t, a, torch.ones_like(t, dtype=torch.bool))[0].numpy().astype(np.float32)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        save_atomic({"dim": self.dim, "heads": self.heads, "state": self.state_dict(), "meta": meta or {}}, Path(path))

    @classmethod
    def load(cls, path: str | Path, dim: int | None = None) -> UserTower:
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, KeyError) as e:
            raise LookalikeError(f"cannot read user tower {path}: {e}") from None
        if dim is not None and d["dim"] != dim:
            raise LookalikeError(f"user tower {path} is {d['dim']}-d; the store holds {dim}-d vectors")
        tower = cls(d["dim"], d["heads"])
        tower.load_state_dict(d["state"])
        tower.meta = d.get("meta", {})
        return tower.eval()
