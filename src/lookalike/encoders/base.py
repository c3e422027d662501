"""One interface for every frozen encoder, so the cache, embedder and towers never care which it is."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image


def default_threads() -> int:
    """Inference threads per process: $LOOKALIKE_THREADS, else the cores (at most 8). Several processes on
    one machine (API workers, test workers) should share the cores rather than each claim all of them."""
    env = os.environ.get("LOOKALIKE_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else min(os.cpu_count() or 1, 8)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count for the work inside, put back after: the count is process-wide, and an
    encoder must not change what the rest of the process (training, a server, other encoders) runs with."""
    import torch

    before = torch.get_num_threads()
    if not n or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ImageEncoder(ABC):
    """A frozen image model: PIL image → array → (B, dim) features.

    `preprocess` may return arrays of different shapes (e.g. native-size pixels that the model
    resizes itself); the embedder batches only arrays of equal shape.

    Preprocessing is split from the forward pass so the embedder can decode the next batch on other
    threads while this one runs, and so the benchmark can time the bare forward pass alone.
    """

    name: str
    dim: int

    @abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    @abstractmethod
    def forward(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def config(self) -> dict:
        """Everything that changes the output: weights identity, input size, normalisation, runtime."""

    @abstractmethod
    def torch_modules(self) -> list:
        """The torch modules holding the weights, so tests can assert they are frozen."""

    def fingerprint(self) -> str:
        return hashlib.sha1(repr(sorted(self.config().items())).encode()).hexdigest()[:16]

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.forward(np.stack([self.preprocess(im) for im in images]))


class TextEncoder(ABC):
    """A frozen sentence encoder; its vectors feed the trainable text head."""

    name: str
    dim: int

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray: ...

    @abstractmethod
    def config(self) -> dict: ...

    def fingerprint(self) -> str:
        return hashlib.sha1(repr(sorted(self.config().items())).encode()).hexdigest()[:16]


def freeze(module) -> None:
    """Put a torch module in eval mode with no trainable parameter: the image side never learns."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def file_sha1(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resize_normalise(image: Image.Image, size: tuple[int, int], mean, std) -> np.ndarray:
    """RGB resize to (height, width) and per-channel normalisation, as float32 CHW."""
    h, w = size
    arr: np.ndarray = np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
