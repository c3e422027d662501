"""Statistics for comparing binary classifiers on the same labelled images.

scikit-learn gives ROC/PR curves and calibration bins, statsmodels McNemar's test, scipy the normal
quantiles. DeLong's AUC variance has no maintained library implementation, so the fast algorithm of
Sun & Xu (2014, IEEE SPL 21:1389) is implemented here and tested against the brute-force Mann–Whitney
structural components.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as st


# ---------------------------------------------------------------- DeLong
def delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score vectors (k, n) on labels y, and their (k, k) DeLong covariance.

    Fast DeLong: midranks of positives among positives (T_X), negatives among negatives (T_Y) and of
    everything together (T_Z) give the structural components V10_i = (T_Z_i - T_X_i)/n and
    V01_j = 1 - (T_Z_{m+j} - T_Y_j)/m in O((m+n) log(m+n)) instead of O(mn).
    """
    y = np.asarray(y).astype(bool)
    s = np.atleast_2d(np.asarray(scores, np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative")
    pos, neg = s[:, y], s[:, ~y]
    tx = st.rankdata(pos, axis=1)
    ty = st.rankdata(neg, axis=1)
    tz = st.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(s), len(s)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(s), len(s)))
    return aucs, s10 / m + s01 / n


def auc_ci(y: np.ndarray, score: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """AUC, its DeLong standard error and a Wald (1-alpha) interval clipped to [0, 1]."""
    aucs, cov = delong(y, score[None])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = st.norm.ppf(1 - alpha / 2)
    return float(aucs[0]), se, float(max(0.0, aucs[0] - z * se)), float(min(1.0, aucs[0] + z * se))


def delong_test(y: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float = 0.05) -> dict:
    """Paired DeLong test of AUC(a) = AUC(b) on the same images: difference, its CI, z and p."""
    aucs, cov = delong(y, np.vstack([a, b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(var, 0.0)))
    zq = st.norm.ppf(1 - alpha / 2)
    if se == 0:
        z, p = (0.0, 1.0) if diff == 0 else (float("inf"), 0.0)
    else:
        z = diff / se
        p = float(2 * st.norm.sf(abs(z)))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "ci": [float(diff - zq * se), float(diff + zq * se)],
        "z": z,
        "p_value": p,
    }


# ---------------------------------------------------------------- thresholds and point metrics
def youden_threshold(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Threshold maximising TPR - FPR (predict positive when score >= threshold) and that J."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, score)
    j = tpr - fpr
    j[~np.isfinite(thr)] = -np.inf  # sklearn's first threshold (+inf) predicts nothing positive
    best = int(np.argmax(j))
    return float(thr[best]), float(j[best])


def threshold_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Confusion matrix and the usual rates; a rate with an empty denominator is 0 (and visible as such)."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        **_rates(np.array([tp]), np.array([fp]), np.array([fn]), np.array([tn]), scalar=True),
    }


def _rates(tp, fp, fn, tn, scalar: bool = False) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
        n = tp + fp + fn + tn
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        spec = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        out = {
            "accuracy": (tp + tn) / n,
            "precision": precision,
            "recall": recall,
            "specificity": spec,
            "f1": f1,
            "balanced_accuracy": (recall + spec) / 2,
        }
    return {k: float(v[0]) for k, v in out.items()} if scalar else out


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Reliability curve (uniform bins), expected calibration error and Brier score."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, frac = float(p[sel].mean()), float(y[sel].mean())
            ece += sel.mean() * abs(conf - frac)
            rows.append(
                {
                    "bin": [float(edges[b]), float(edges[b + 1])],
                    "n": int(sel.sum()),
                    "mean_score": conf,
                    "fraction_positive": frac,
                }
            )
    return {"bins": rows, "ece": float(ece), "brier": float(np.mean((p - y) ** 2))}


# ---------------------------------------------------------------- bootstrap
def stratified_bootstrap_indices(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) resample indices drawn within each class, so every replicate keeps both classes."""
    rng = np.random.default_rng(seed)
    cols = []
    for c in (1, 0):  # positives first: `bootstrap_auc` relies on the order
        idx = np.flatnonzero(y == c)
        cols.append(idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))])
    return np.concatenate(cols, axis=1)


def bootstrap_threshold_metrics(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    yb, pb = y[idx].astype(bool), pred[idx].astype(bool)
    tp, fp = (pb & yb).sum(1), (pb & ~yb).sum(1)
    fn, tn = (~pb & yb).sum(1), (~pb & ~yb).sum(1)
    return _rates(tp, fp, fn, tn)


def bootstrap_auc(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC of every replicate from row-wise ranks (positives occupy the first m columns)."""
    m, n = int((y == 1).sum()), int((y == 0).sum())
    ranks = st.rankdata(score[idx], axis=1)
    return (ranks[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)


def bootstrap_average_precision(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average precision (sklearn's definition, ties included) of every replicate, vectorised.

    Sorted by descending score, each positive contributes precision-at-the-end-of-its-tie-group / m;
    the end of each position's tie group comes from a reversed running minimum.
    """
    s, lab = score[idx], y[idx]
    order = np.argsort(-s, axis=1, kind="stable")
    s, lab = np.take_along_axis(s, order, 1), np.take_along_axis(lab, order, 1)
    n = s.shape[1]
    tp = np.cumsum(lab, axis=1)
    last = np.ones_like(s, dtype=bool)
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    ends = np.where(last, np.arange(n), n - 1)
    ends = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    prec_end = np.take_along_axis(tp, ends, 1) / (ends + 1)
    return (lab * prec_end).sum(1) / lab.sum(1)


def percentile_ci(samples: np.ndarray, alpha: float = 0.05) -> list[float]:
    return [float(np.quantile(samples, alpha / 2)), float(np.quantile(samples, 1 - alpha / 2))]


# ---------------------------------------------------------------- paired tests and power
def mcnemar_test(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """McNemar on paired correctness; exact binomial when fewer than 25 discordant pairs."""
    from statsmodels.stats.contingency_tables import mcnemar

    ca, cb = pred_a.astype(bool) == y.astype(bool), pred_b.astype(bool) == y.astype(bool)
    table = np.array([[int((ca & cb).sum()), int((ca & ~cb).sum())], [int((~ca & cb).sum()), int((~ca & ~cb).sum())]])
    discordant = int(table[0, 1] + table[1, 0])
    exact = discordant < 25
    res = mcnemar(table, exact=exact, correction=True)
    return {
        "table": table.tolist(),
        "a_only_correct": int(table[0, 1]),
        "b_only_correct": int(table[1, 0]),
        "discordant": discordant,
        "exact": exact,
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
    }


def mcnemar_mdd(n: int, discordant_fraction: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference McNemar detects with this n and discordance (Connor 1987).

    Connor's sample size n = (z_a·√ψ + z_b·√(ψ−δ²))² / δ², solved for δ.
    """
    from scipy.optimize import brentq

    psi = max(discordant_fraction, 1.0 / n)
    za, zb = st.norm.ppf(1 - alpha / 2), st.norm.ppf(power)

    def f(d):
        return (za * np.sqrt(psi) + zb * np.sqrt(max(psi - d * d, 0.0))) / d - np.sqrt(n)

    hi = np.sqrt(psi)
    if f(hi) > 0:  # even the largest possible difference is not detectable
        return float(hi)
    return float(brentq(f, 1e-9, hi))


def mcnemar_required_n(delta: float, discordant_fraction: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Pairs needed for McNemar to detect an accuracy difference delta (Connor 1987)."""
    psi = discordant_fraction
    if delta == 0 or psi <= delta * delta:
        return float("inf") if delta == 0 else 0.0
    za, zb = st.norm.ppf(1 - alpha / 2), st.norm.ppf(power)
    return float((za * np.sqrt(psi) + zb * np.sqrt(psi - delta * delta)) ** 2 / delta**2)


def auc_mdd(se_diff: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest AUC difference a two-sided DeLong test detects: (z_a + z_b)·SE(ΔAUC)."""
    return float((st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)) * se_diff)
