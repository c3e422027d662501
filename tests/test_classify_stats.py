"""The A/B statistics: fast DeLong against brute-force Mann–Whitney, thresholds, bootstrap, McNemar, power."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lookalike.classify import stats


def _brute_force(y, scores):
    """DeLong's structural components straight from the definition: psi(x, y) over all pairs."""
    comps10, comps01, aucs = [], [], []
    for s in scores:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(psi.mean())
        comps10.append(psi.mean(axis=1))
        comps01.append(psi.mean(axis=0))
    m, n = (y == 1).sum(), (y == 0).sum()
    return np.array(aucs), np.cov(np.array(comps10)) / m + np.cov(np.array(comps01)) / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    # rounding makes many ties, the case where midranks matter
    scores = np.vstack([np.round(rng.normal(y * d, 1), 1) for d in (1.5, 0.7, 0.0)])
    aucs, cov = stats.delong(y, scores)
    ref_aucs, ref_cov = _brute_force(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, s) for s in scores], atol=1e-12)


def test_delong_test_and_ci():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    good, weak = rng.normal(y * 2.0, 1), rng.normal(y * 0.3, 1)
    same = stats.delong_test(y, good, good)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    diff = stats.delong_test(y, good, weak)
    assert diff["p_value"] < 1e-6 and diff["ci"][0] > 0
    auc, se, lo, hi = stats.auc_ci(y, good)
    assert lo < auc < hi and 0 < se < 0.05


def test_youden_threshold_is_a_score_that_maximises_j():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9])
    thr, j = stats.youden_threshold(y, s)
    assert thr == 0.6 and j == pytest.approx(0.75)  # tpr 3/4 − fpr 0
    assert all((np.mean(s[y == 1] >= t) - np.mean(s[y == 0] >= t)) <= j + 1e-12 for t in s)


def test_threshold_metrics_match_sklearn():
    rng = np.random.default_rng(4)
    y, pred = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    m = stats.threshold_metrics(y, pred)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == 300


def test_bootstrap_is_stratified_and_its_auc_exact():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s = rng.normal(y, 1)
    idx = stats.stratified_bootstrap_indices(y, 50, seed=0)
    assert (y[idx].sum(1) == y.sum()).all()  # every replicate keeps the class counts
    boots = stats.bootstrap_auc(y, s, idx)
    np.testing.assert_allclose(boots[:5], [roc_auc_score(y[r], s[r]) for r in idx[:5]], atol=1e-12)
    s_ties = np.round(s, 1)  # average precision with tied scores, against sklearn's definition
    np.testing.assert_allclose(
        stats.bootstrap_average_precision(y, s_ties, idx[:10]),
        [average_precision_score(y[r], s_ties[r]) for r in idx[:10]],
        atol=1e-12,
    )
    ident = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)])[None]
    assert stats.bootstrap_auc(y, s, ident)[0] == pytest.approx(roc_auc_score(y, s))


def test_mcnemar_exact_matches_binomial_and_power_round_trip():
    y = np.ones(40, int)
    a = np.r_[np.ones(30), np.zeros(10)]  # a right on 30
    b = np.r_[np.ones(22), np.zeros(18)]  # b right on 22, all inside a's
    res = stats.mcnemar_test(y, a, b)
    assert res["a_only_correct"] == 8 and res["b_only_correct"] == 0 and res["exact"]
    assert res["p_value"] == pytest.approx(binomtest(0, 8, 0.5).pvalue)
    mdd = stats.mcnemar_mdd(2000, 0.12)
    assert stats.mcnemar_required_n(mdd, 0.12) == pytest.approx(2000, rel=1e-6)
    assert stats.mcnemar_mdd(80, 0.12) > stats.mcnemar_mdd(2000, 0.12)  # fewer images, coarser test


def test_calibration_of_a_perfectly_calibrated_score():
    rng = np.random.default_rng(6)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    cal = stats.calibration(y, p)
    assert cal["ece"] < 0.02 and len(cal["bins"]) == 10
    assert stats.calibration(y, np.clip(p * 0.3, 0, 1))["ece"] > 0.2
