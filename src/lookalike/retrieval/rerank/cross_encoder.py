"""Cross-encoder reranking: a model reads (query, candidate) together and rescores the first stage's top-N.

`Reranker` is the interface (anything with `score(query, docs)`); `HFCrossEncoder` loads a Hugging Face
sequence-classification checkpoint from a local directory (e.g. a BGE / mMiniLM reranker saved with
`save_pretrained`). Only the top `depth` candidates are rescored; the rest keep their order below them,
so reranking never drops a candidate.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from lookalike.encoders.base import freeze, torch_threads
from lookalike.errors import LookalikeError


class Reranker(Protocol):
    name: str

    def score(self, query: str, docs: list[str]) -> np.ndarray: ...

    def config(self) -> dict: ...


class HFCrossEncoder:
    """Relevance = the single logit (num_labels=1, as sentence-transformers' CrossEncoder) or, for two
    labels, logit(relevant) − logit(not relevant)."""

    def __init__(self, directory: str, batch_size: int = 32, max_length: int = 256, threads: int | None = None):
        try:
            import torch  # noqa: F401
            import transformers
        except ImportError as e:
            raise LookalikeError(
                f"cross-encoder reranking needs transformers: pip install 'lookalike[clip]' ({e})"
            ) from e
        from lookalike.encoders.hf_text import load_checked

        path = os.path.expanduser(directory)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise LookalikeError(
                f"{os.path.abspath(path)} is not a local Hugging Face model directory (no config.json)"
            )
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            self.model = load_checked(transformers.AutoModelForSequenceClassification, path)
        except (OSError, ValueError) as e:
            raise LookalikeError(f"could not load a cross-encoder from {path}: {e}") from e
        if self.model.config.num_labels not in (1, 2):
            raise LookalikeError(f"{path}: a cross-encoder needs 1 or 2 labels, found {self.model.config.num_labels}")
        freeze(self.model)
        self.path, self.batch_size, self.max_length, self.threads = path, batch_size, max_length, threads
        self.name = f"hf-cross-encoder:{path}"

    def config(self) -> dict:
        from pathlib import Path

        from lookalike.encoders.clip import _files_identity

        return {"reranker": self.name, "files": repr(_files_identity(Path(self.path))), "max_length": self.max_length}

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch_threads(self.threads), torch.inference_mode():
            for s in range(0, len(docs), self.batch_size):
                part = docs[s : s + self.batch_size]
                batch = self.tokenizer(
                    [query] * len(part),
                    part,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                logits = self.model(**batch).logits.float()
                out.append((logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def create_reranker(name: str) -> Reranker:
    if name.startswith("hf-cross-encoder:"):
        return HFCrossEncoder(name.split(":", 1)[1])
    raise LookalikeError(f"unknown reranker {name!r}; use hf-cross-encoder:<dir>")


def rerank(
    run: tuple[np.ndarray, np.ndarray], queries: list[str], doc_texts: list[str], reranker: Reranker, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rescore each query's top-`depth`; ties keep the first stage's order. The candidates below keep
    their order with scores under the reranked ones, so the run stays sorted."""
    idx, sc = run
    new_idx, new_sc = idx.copy(), sc.astype(np.float32).copy()
    d = min(depth, idx.shape[1])
    for i, q in enumerate(queries):
        top = idx[i, :d]
        s = np.asarray(reranker.score(q, [doc_texts[j] for j in top]), np.float32)
        order = np.lexsort((np.arange(d), -s))
        new_idx[i, :d] = top[order]
        new_sc[i, :d] = s[order]
        if idx.shape[1] > d:
            new_sc[i, d:] = s.min() - np.arange(1, idx.shape[1] - d + 1, dtype=np.float32)
    return new_idx, new_sc
