"""Diversity metrics against hand-worked examples of the Microsoft Recommenders formulas
(recommenders.evaluation.python_evaluation; the package itself is too heavy a dependency to install)."""

import math

import numpy as np
import pytest

from lookalike.evaluation.diversity import catalogue_coverage, intra_list_diversity, mean_intra_list_diversity, novelty


def test_intra_list_diversity_hand_worked():
    # pairs: (e1, e2) cos 0, (e1, d) cos 1/√2, (e2, d) cos 1/√2 → diversity = 1 − √2/3
    v = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])  # unnormalised on purpose
    assert intra_list_diversity(v) == pytest.approx(1 - math.sqrt(2) / 3)
    assert intra_list_diversity(v[:1]) == 0.0
    assert intra_list_diversity(np.ones((4, 3))) == pytest.approx(0.0)


def test_mean_over_lists_matches_per_list():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    lists = rng.choice(30, size=(5, 6), replace=True)
    expected = np.mean([intra_list_diversity(x[row]) for row in lists])
    assert mean_intra_list_diversity(lists, x) == pytest.approx(expected)


def test_catalogue_coverage_hand_worked():
    assert catalogue_coverage([["a", "b"], ["b", "c"]], ["a", "b", "c", "d"]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        catalogue_coverage([["a"]], [])


def test_novelty_hand_worked():
    # train: a twice, b once, c once (4 records) → novelty a = 1, b = c = 2 bits; "e" never seen adds 0
    # but counts in the denominator, as the reference's inner merge does: (1 + 2 + 2 + 2 + 0) / 5.
    popularity = {"a": 2, "b": 1, "c": 1}
    assert novelty([["a", "b"], ["b", "c", "e"]], popularity) == pytest.approx(7 / 5)
    with pytest.raises(ValueError):
        novelty([["a"]], {})
