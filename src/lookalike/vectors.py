"""The one unit-normalisation, with one rule for the vectors other helpers disagreed on.

Every space here is cosine on unit vectors, so every producer (the frozen projection, query encoders,
stores, centrality, diversity, dense item search) normalises through `unit`:

- a zero vector stays zero (there is no direction to give it; whoever must refuse one, as the stores do
  for items and queries, checks for it before calling);
- a vector already within 1e-6 of unit norm is returned bit for bit, so normalising twice changes
  nothing (a stored vector read back and re-sent is the same vector, and digests of it match);
- any other finite vector is divided by its L2 norm, however small the norm is.
"""

from __future__ import annotations

import numpy as np

UNIT_TOLERANCE = 1e-6


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """`x` scaled to unit L2 norm along `axis` (see the module docstring for zero and near-unit vectors).
    Floating inputs keep their dtype; anything else becomes float32."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    keep = (norm == 0) | (np.abs(norm - 1) <= UNIT_TOLERANCE)
    return np.where(keep, x, x / np.where(keep, 1, norm)).astype(x.dtype, copy=False)
