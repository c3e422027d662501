"""Scoring item-to-item runs against a qrels file: per-query metrics, per-class breakdown, paired tests.

Metrics come from `lookalike.evaluation.metrics.per_query_metrics` (checked against ranx in the test
suite); significance by the paired tests ranx's `compare` runs (Fisher randomization, paired t-test),
recomputed here and cross-checked against ranx by the study. Queries without a
relevant item in the GT are left out (ranx and trec_eval do the same), and each result says how many
queries it averages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from lookalike.evaluation.metrics import graded_ndcg, per_query_metrics
from lookalike.itembank.groundtruth import Qrels

KS = [1, 3, 5, 10]
REPORTED = [
    "hit@1",
    "hit@3",
    "hit@5",
    "hit@10",
    "precision@5",
    "recall@5",
    "recall@10",
    "mrr",
    "map",
    "ndcg@10",
    "ndcg@10_binary",
]


@dataclass(frozen=True)
class Grading:
    """How a qrels file's grades are read: gains for nDCG are grade − `low` (so 1 on a 1–5 scale gains
    nothing), and hit, precision, recall, MRR and MAP count an item relevant from `threshold` on."""

    scale: Literal["binary", "0-4", "1-5"] = "binary"
    threshold: int | None = None

    @property
    def low(self) -> int:
        return 1 if self.scale == "1-5" else 0

    @property
    def cut(self) -> int:
        return self.threshold if self.threshold is not None else {"binary": 1, "0-4": 2, "1-5": 3}[self.scale]

    def describe(self) -> dict:
        return {"scale": self.scale, "threshold": self.cut, "gain": f"grade - {self.low}"}


BINARY = Grading()


def binarise(qrels: Qrels, grading: Grading) -> Qrels:
    """The pairs at or above the threshold, each as grade 1 (what a yes/no judge or reranker can express)."""
    out = {q: {d: 1 for d, g in rel.items() if g >= grading.cut} for q, rel in qrels.items()}
    return {q: rel for q, rel in out.items() if rel}


def run_metrics(
    idx: np.ndarray, ids: list[str], qrels: Qrels, grading: Grading = BINARY
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(query rows scored, per-query metrics). Row i of `idx` is item i's ranked list (indices into ids;
    -1 pads a list shorter than the run, see retrieval/topk.py). A query is scored when one item reaches the
    threshold; `ndcg@10` uses the graded gains, `ndcg@10_binary` the same truth binarised at the threshold."""
    cut = grading.cut
    rows = np.array([i for i, q in enumerate(ids) if any(g >= cut for g in qrels.get(q, {}).values())], np.int64)
    ids_arr = np.asarray(ids, dtype=object)
    grades = np.zeros((len(rows), idx.shape[1]), np.float64)
    n_rel = np.zeros(len(rows), np.int64)
    ideal = []
    for r, i in enumerate(rows):
        judged = qrels[ids[i]]
        grades[r] = [judged.get(d, 0) if j >= 0 else 0 for j, d in zip(idx[i], ids_arr[idx[i]])]
        n_rel[r] = sum(g >= cut for g in judged.values())
        ideal.append(np.maximum(np.array(list(judged.values()), np.float64) - grading.low, 0))
    pq = per_query_metrics(grades >= cut, n_rel, KS)
    pq["ndcg@10_binary"] = pq["ndcg@10"]
    pq["ndcg@10"] = graded_ndcg(np.maximum(grades - grading.low, 0), ideal, 10)
    return rows, {m: pq[m] for m in REPORTED}


def summarise(pq: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    sel = slice(None) if mask is None else mask
    out = {m: float(v[sel].mean()) if len(v[sel]) else float("nan") for m, v in pq.items()}
    out["n_queries"] = len(next(iter(pq.values()))[sel])
    return out


def per_class(pq: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict[str, float]]:
    lab = np.asarray(labels)
    return {c: summarise(pq, lab == c) for c in sorted(set(labels), key=lambda x: (len(x), x))}


def ranx_qrels(qrels: Qrels, grading: Grading, keep: set[str] | None = None):
    """The qrels as ranx reads them: gains (grade − low) for nDCG; ranx's `-lN` metric suffix applies the
    threshold (on gains, so N = threshold − low)."""
    from ranx import Qrels as RQ

    gains = {
        q: {d: g - grading.low for d, g in rel.items() if g - grading.low > 0}
        for q, rel in qrels.items()
        if keep is None or q in keep
    }
    return RQ.from_dict({q: rel for q, rel in gains.items() if rel})


def ranx_run(idx: np.ndarray, ids: list[str], rows: np.ndarray, name: str):
    """A ranx Run whose scores are depth − rank, so ranx sees exactly our order (no tie reshuffling)."""
    from ranx import Run

    depth = idx.shape[1]
    return Run.from_dict(
        {ids[i]: {ids[j]: float(depth - r) for r, j in enumerate(idx[i]) if j >= 0} for i in rows}, name=name
    )


def paired_test(a: np.ndarray, b: np.ndarray, n_permutations: int = 10000, seed: int = 42) -> dict:
    """Two-sided paired tests on per-query scores, as ranx's `compare` computes them: Fisher's
    randomization test (random sign flips of the differences; p = share of |mean| ≥ observed) and
    Student's paired t-test. ranx itself spends seconds of JIT compilation per process (the study's
    `ranx_check_s`, printed by benchmarks/itembank.py), so the study cross-checks these p-values against
    ranx once instead of every run paying for it."""
    from scipy.stats import ttest_rel

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    out = {
        "mean_a": float(np.mean(a)),
        "mean_b": float(np.mean(b)),
        "diff": float(d.mean()),
        "n": len(d),
        "win_tie_loss": [int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())],
    }
    if len(d) < 2 or not d.any():
        return {**out, "fisher_p": 1.0, "t_p": 1.0}
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_permutations, len(d)))
    perm = np.abs(signs @ d) / len(d)
    out["fisher_p"] = float((perm >= abs(d.mean()) - 1e-12).mean())
    t = ttest_rel(a, b)
    out["t_p"] = float(t.pvalue) if np.isfinite(t.pvalue) else 1.0
    return out


def compare_runs(
    pq_a: dict[str, np.ndarray],
    pq_b: dict[str, np.ndarray],
    mask: np.ndarray | None = None,
    metrics: tuple[str, ...] = ("ndcg@10", "mrr"),
    seed: int = 42,
) -> dict[str, dict]:
    sel = slice(None) if mask is None else mask
    return {m: paired_test(pq_a[m][sel], pq_b[m][sel], seed=seed) for m in metrics}
