"""Score fusion: normalisation, weighting over α, RRF, self-exclusion and ties."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.retrieval.fusion import fuse, normalise, topk_from_scores


def test_normalise_minmax_and_zscore():
    s = np.array([[3.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(normalise(s, "minmax"), [[1, 0, 0.5], [1, 1, 1]])
    z = normalise(s, "zscore")
    np.testing.assert_allclose(z[0], (s[0] - 2) / np.std(s[0]))
    np.testing.assert_allclose(z[1], 0)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(s, "softmax")


def test_topk_ties_by_index_and_exclusion():
    idx, sc = topk_from_scores(np.array([[1.0, 2.0, 2.0, 0.5]]), 3, np.array([1]))
    assert idx.tolist() == [[2, 0, 3]] and sc.tolist() == [[2.0, 1.0, 0.5]]


def test_alpha_endpoints_reproduce_each_retriever_and_middle_mixes():
    # Dense prefers doc 0 then 1; BM25 (on another scale) prefers 2 then 1. Doc 1 is second for both.
    dense = (np.array([[0, 1, 3]]), np.array([[0.9, 0.8, 0.1]]))
    bm25 = (np.array([[2, 1, 3]]), np.array([[30.0, 25.0, 1.0]]))
    for method in ("minmax", "zscore"):
        assert fuse([dense, bm25], [1, 0], 4, 2, method)[0].tolist() == [[0, 1]]
        assert fuse([dense, bm25], [0, 1], 4, 2, method)[0].tolist() == [[2, 1]]
    # α = 0.5, min-max: doc1 = 0.5·0.875 + 0.5·0.828 beats doc0 = 0.5·1 + 0 and doc2 = 0 + 0.5·1.
    idx, sc = fuse([dense, bm25], [0.5, 0.5], 4, 3, "minmax")
    assert idx[0, 0] == 1 and sc[0, 0] == pytest.approx(0.5 * 0.7 / 0.8 + 0.5 * 24 / 29, rel=1e-6)
    # RRF: doc1 (rank 2 twice) 2/62 > doc3 (rank 3 twice) 2/63 > docs 0, 2 (rank 1 once) 1/61, tie by index.
    idx, sc = fuse([dense, bm25], [1, 1], 4, 4, "rrf")
    assert idx[0].tolist() == [1, 3, 0, 2]
    np.testing.assert_allclose(sc[0], [2 / 62, 2 / 63, 1 / 61, 1 / 61], rtol=1e-6)


def test_unlisted_documents_are_never_returned_and_self_is_excluded():
    a = (np.array([[1, 2]]), np.array([[1.0, 0.5]]))
    b = (np.array([[0, 2]]), np.array([[9.0, 1.0]]))  # doc 0 is the query itself
    idx, sc = fuse([a, b], [0.5, 0.5], 5, 4, "minmax", exclude=np.array([0]))
    assert set(idx[0, :2].tolist()) == {1, 2} and np.isfinite(sc[0, :2]).all()
    assert idx[0, 2:].tolist() == [-1, -1] and np.isneginf(sc[0, 2:]).all()  # padding, not documents
    with pytest.raises(ValueError, match="≥ 0"):
        fuse([a, b], [-1, 1], 5, 2)


def test_paired_randomization_test_matches_exact_enumeration():
    import itertools

    from scipy.stats import ttest_rel

    from lookalike.itembank.evaluate import paired_test

    rng = np.random.default_rng(1)
    a, b = rng.random(10), rng.random(10) - 0.2
    d = a - b
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    exact = (np.abs(flips @ d) >= abs(d.sum()) - 1e-12).mean()
    res = paired_test(a, b, n_permutations=20000, seed=0)
    assert res["fisher_p"] == pytest.approx(exact, abs=0.01)
    assert res["t_p"] == pytest.approx(ttest_rel(a, b).pvalue)
    assert res["win_tie_loss"] == [int((d > 0).sum()), 0, int((d < 0).sum())]
    assert paired_test(a, a)["fisher_p"] == 1.0
