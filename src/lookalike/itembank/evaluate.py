"""Scoring item-to-item runs against a qrels file: per-query metrics, per-class breakdown, paired tests.

Metrics come from `lookalike.evaluation.metrics.per_query_metrics` (checked against ranx in the test
suite); significance from ranx's `compare` (Fisher randomization and paired t-test). Queries without a
relevant item in the GT are left out (ranx and trec_eval do the same), and each result says how many
queries it averages.
"""

from __future__ import annotations

import numpy as np

from lookalike.evaluation.metrics import per_query_metrics
from lookalike.itembank.groundtruth import Qrels

KS = [1, 3, 5, 10]
REPORTED = ["hit@1", "hit@3", "hit@5", "hit@10", "recall@5", "recall@10", "mrr", "map", "ndcg@10"]


def run_metrics(idx: np.ndarray, ids: list[str], qrels: Qrels) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(query rows scored, per-query metrics). Row i of `idx` is item i's ranked list (indices into ids)."""
    rows = np.array([i for i, q in enumerate(ids) if q in qrels], np.int64)
    ids_arr = np.asarray(ids, dtype=object)
    rel = np.zeros((len(rows), idx.shape[1]), bool)
    n_rel = np.zeros(len(rows), np.int64)
    for r, i in enumerate(rows):
        relevant = qrels[ids[i]]
        rel[r] = [d in relevant for d in ids_arr[idx[i]]]
        n_rel[r] = len(relevant)
    pq = per_query_metrics(rel, n_rel, KS)
    return rows, {m: pq[m] for m in REPORTED}


def summarise(pq: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    sel = slice(None) if mask is None else mask
    out = {m: float(v[sel].mean()) if len(v[sel]) else float("nan") for m, v in pq.items()}
    out["n_queries"] = int(len(next(iter(pq.values()))[sel]))
    return out


def per_class(pq: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict[str, float]]:
    lab = np.asarray(labels)
    return {c: summarise(pq, lab == c) for c in sorted(set(labels), key=lambda x: (len(x), x))}


def ranx_run(idx: np.ndarray, ids: list[str], rows: np.ndarray, name: str):
    """A ranx Run whose scores are depth − rank, so ranx sees exactly our order (no tie reshuffling)."""
    from ranx import Run

    depth = idx.shape[1]
    return Run.from_dict({ids[i]: {ids[j]: float(depth - r) for r, j in enumerate(idx[i])} for i in rows}, name=name)


def paired_test(qrels: Qrels, runs: dict[str, np.ndarray], ids: list[str], rows: np.ndarray,
                metrics: tuple[str, ...] = ("ndcg@10", "mrr"), seed: int = 42) -> dict:
    """ranx compare of two runs on the same queries: Fisher randomization and paired t-test p-values."""
    from ranx import Qrels as RQ, compare

    q = RQ.from_dict({ids[i]: qrels[ids[i]] for i in rows})
    rr = [ranx_run(idx, ids, rows, name) for name, idx in runs.items()]
    a, b = list(runs)
    out: dict = {"a": a, "b": b, "n_queries": int(len(rows))}
    for test in ("fisher", "student"):
        d = compare(q, rr, metrics=list(metrics), stat_test=test, n_permutations=10000, random_seed=seed).to_dict()
        out[test] = {m: float(d[a]["comparisons"][b][m]) for m in metrics}
        out["scores"] = {name: {m: float(d[name]["scores"][m]) for m in metrics} for name in (a, b)}
        out["win_tie_loss"] = d[a]["win_tie_loss"][b]
    return out
