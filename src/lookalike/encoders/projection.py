"""The frozen image space the towers learn into: backbone features, optionally centred or PCA-reduced.

The projection is unsupervised and fitted on the training gallery only, then frozen, so the image
side still never learns from labels. PCA to 512 gives any backbone the width FashionCLIP has.
"""

from __future__ import annotations

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.vectors import unit


class ImageSpace:
    def __init__(self, kind: str = "none", dim: int = 512):
        if kind not in ("none", "center", "pca"):
            raise ValueError(f"projection must be none, center or pca, got {kind!r}")
        self.kind, self.dim = kind, dim
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None

    def fit(self, features: np.ndarray) -> ImageSpace:
        if self.kind == "none":
            return self
        x = features.astype(np.float64)
        self.mean = x.mean(axis=0)
        if self.kind == "pca":
            if self.dim > min(x.shape):
                raise LookalikeError(
                    f"PCA to {self.dim} dims needs at least {self.dim} training images and feature "
                    f"dims, got {x.shape[0]} images × {x.shape[1]} dims; use --projection none "
                    "or a smaller encoder.projection_dim"
                )
            xc = x - self.mean
            # Eigen-decomposition of the d×d covariance: same components as an SVD of the data, far cheaper.
            evals, evecs = np.linalg.eigh(xc.T @ xc)
            self.components = evecs[:, np.argsort(evals)[::-1][: self.dim]].T
        return self

    @property
    def out_dim(self) -> int | None:
        return self.dim if self.kind == "pca" else None

    def transform(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Unit vectors in the space, computed a chunk of rows at a time: a million 1280-d features need
        only their 512-d output beside them, not three full-size temporaries."""
        out = np.empty((len(features), self.out_dim or features.shape[1]), np.float32)
        mean = None if self.mean is None else self.mean.astype(np.float32)
        comps = None if self.components is None else self.components.T.astype(np.float32)
        for s in range(0, len(features), chunk):
            x = features[s : s + chunk].astype(np.float32)
            if mean is not None:
                x -= mean
            if comps is not None:
                x = x @ comps
            out[s : s + chunk] = unit(x)
        return out

    def state(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "mean": self.mean, "components": self.components}

    @classmethod
    def from_state(cls, s: dict) -> ImageSpace:
        space = cls(s["kind"], s["dim"])
        space.mean, space.components = s["mean"], s["components"]
        return space
