"""How far a tagger's confidences can be trusted: expected calibration error, temperature scaling, and the
share of products that can be tagged automatically at a target accuracy."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-7


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, EPS, 1.0))


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(log p / T) on labelled rows (y ≥ 0); 1.0 when
    there is nothing to fit on. Scaling keeps each row's ranking, so accuracy is unchanged."""
    ok = y >= 0
    if ok.sum() < 2:
        return 1.0
    lp, yy = log_probs(p[ok]), y[ok]

    def nll(log_t: float) -> float:
        q = softmax(lp / np.exp(log_t))
        return float(-np.log(np.clip(q[np.arange(len(yy)), yy], EPS, 1.0)).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def scale(p: np.ndarray, temperature: float) -> np.ndarray:
    return p if temperature == 1.0 else softmax(log_probs(p) / temperature)


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: the mean |accuracy − confidence| over equal-width confidence bins,
    weighted by their share of rows."""
    if len(confidence) == 0:
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(float(correct[m].mean()) - float(confidence[m].mean()))
    return total


def coverage_at(confidence: np.ndarray, correct: np.ndarray, accuracy: float = 0.95) -> tuple[float, float]:
    """(share of rows, confidence threshold): the largest share of rows, taken most confident first, whose
    accuracy is still ≥ `accuracy` — what can be tagged without a person at that accuracy. (0, 1) if none."""
    if len(confidence) == 0:
        return 0.0, 1.0
    order = np.argsort(-confidence, kind="stable")
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(running >= accuracy)[0]
    if len(ok) == 0:
        return 0.0, 1.0
    last = int(ok[-1])
    return (last + 1) / len(order), float(confidence[order][last])
