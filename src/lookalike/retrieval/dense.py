"""Dense item search: a frozen text encoder's unit vectors, searched exactly (or through a vector store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.encoders.base import TextEncoder
from lookalike.encoders.embedder import embed_texts
from lookalike.retrieval.exact import exact_topk
from lookalike.vectors import unit


class DenseRetriever:
    name = "dense"

    def __init__(self, encoder: TextEncoder, texts: list[str], cache_root: Path, progress: bool = False):
        self.encoder, self.cache_root, self.progress = encoder, Path(cache_root), progress
        self.vectors = unit(embed_texts(list(texts), encoder, self.cache_root, progress=progress).astype(np.float32))

    def config(self) -> dict:
        return {"retriever": "dense", **self.encoder.config()}

    def embed(self, queries: list[str], cache: bool = True) -> np.ndarray:
        """Unit query vectors; `cache=False` for live queries (latency must include the encoder)."""
        if cache:
            vectors = embed_texts(list(queries), self.encoder, self.cache_root, progress=self.progress)
            return unit(vectors.astype(np.float32))
        return unit(self.encoder.encode(list(queries)).astype(np.float32))

    def search(
        self,
        queries: list[str] | None = None,
        k: int = 10,
        exclude: np.ndarray | None = None,
        query_vectors: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = query_vectors if query_vectors is not None else self.embed(queries or [])
        return exact_topk(q, self.vectors, k, exclude)
