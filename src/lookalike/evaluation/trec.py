"""TREC-format run and qrels files, so trec_eval or ranx can recompute every figure we report."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_run(
    path: Path, query_ids: list[str], doc_ids: list[str], top_idx: np.ndarray, top_scores: np.ndarray, name: str
) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q, row, scores in zip(query_ids, top_idx, top_scores):
            for rank, (j, s) in enumerate(zip(row, scores), 1):
                # 9 significant digits round-trip any float32, so distinct scores stay distinct and in
                # order (fixed 7 decimals merged close scores, leaving ranx/trec_eval free to reorder them).
                f.write(f"{q} Q0 {doc_ids[j]} {rank} {float(s):.9g} {name}\n")


def write_qrels(
    path: Path,
    query_ids: list[str],
    doc_ids: list[str],
    query_keys: np.ndarray,
    doc_keys: np.ndarray,
    exclude: np.ndarray | None = None,
) -> None:
    """Every gallery item whose key equals the query's key is relevant (grade 1)."""
    members: dict[int, list[int]] = {}
    for j, k in enumerate(doc_keys.tolist()):
        members.setdefault(k, []).append(j)
    with open(path, "w", encoding="utf-8") as f:
        for i, (q, k) in enumerate(zip(query_ids, query_keys.tolist())):
            skip = -1 if exclude is None else int(exclude[i])
            for j in members.get(k, []):
                if j != skip:
                    f.write(f"{q} 0 {doc_ids[j]} 1\n")
