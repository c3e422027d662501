"""List-wise diversity reranker: it starts as mean-redundancy MMR, its reward is the evaluation's
metrics, training learns relevance the first-stage scores miss, and selection honours the diversity floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.evaluation.diversity import intra_list_diversity
from lookalike.evaluation.metrics import per_query_metrics
from lookalike.retrieval.rerank.listwise import ListwiseReranker, rerank
from lookalike.training.listwise import Lists, ListwiseConfig, constrained_best, list_reward, train_listwise


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _mean_redundancy_mmr(z: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Reference: each step picks argmax z − λ · mean cosine to the picked items."""
    sims, picked = vectors @ vectors.T, [int(np.argmax(z))]
    while len(picked) < k:
        score = z - lam * sims[:, picked].mean(axis=1)
        score[picked] = -np.inf
        picked.append(int(np.argmax(score)))
    return picked


def test_untrained_reranker_is_mean_redundancy_mmr_on_standardised_scores():
    rng = np.random.default_rng(0)
    n, N, D = 12, 30, 8
    gallery = _unit(rng.normal(size=(200, D)))
    cand = np.stack([rng.choice(200, N, replace=False) for _ in range(n)])
    scores = rng.normal(size=(n, N)).astype(np.float32)
    torch.manual_seed(0)
    model = ListwiseReranker(k=10, dim=16, initial_lambda=3.0)
    picks = rerank(model, gallery, cand, scores)
    for i in range(n):
        z = (scores[i] - scores[i].mean()) / scores[i].std(ddof=1)
        assert picks[i].tolist() == _mean_redundancy_mmr(z, gallery[cand[i]], 10, 3.0)


def test_reward_is_ndcg_plus_weighted_ild():
    rng = np.random.default_rng(1)
    B, N, D, k = 5, 20, 6, 4
    vectors = _unit(rng.normal(size=(B, N, D)))
    relevant = rng.random((B, N)) < 0.3
    n_rel = relevant.sum(axis=1) + rng.integers(0, 3, B)  # some relevant items beyond the candidates
    picks = np.stack([rng.choice(N, k, replace=False) for _ in range(B)])
    got = list_reward(
        torch.from_numpy(picks), torch.from_numpy(relevant), torch.from_numpy(n_rel), torch.from_numpy(vectors), mu=0.7
    ).numpy()
    rows = np.arange(B)[:, None]
    ndcg = per_query_metrics(relevant[rows, picks], n_rel, [k])["ndcg@10"]  # depth k < 10: nDCG@k
    ild = np.array([intra_list_diversity(vectors[b, picks[b]]) for b in range(B)])
    np.testing.assert_allclose(got, ndcg + 0.7 * ild, atol=1e-5)


def test_constrained_best_is_the_best_ndcg_above_the_diversity_floor():
    evals = [
        {"ndcg": 0.40, "ild": 0.40},
        {"ndcg": 0.38, "ild": 0.50},
        {"ndcg": 0.36, "ild": 0.55},
        {"ndcg": 0.39, "ild": 0.47},
    ]
    assert constrained_best(evals, 0.48, mu=1.0) == 1
    assert constrained_best(evals, 0.60, mu=1.0) == 2  # nothing reaches the floor: the most diverse
    assert constrained_best(evals, None, mu=1.0) == 2  # no floor: the best reward ndcg + μ·ild
    assert constrained_best(evals, None, mu=0.0) == 0


def _clustered_lists(seed: int, n: int, spread: float = 0.25, N: int = 20, D: int = 8, n_rel: int = 5) -> Lists:
    """Each list: n_rel relevant candidates tightly around a query-specific direction (the top-scored
    one among them), the rest random; the other first-stage scores are noise. The relevant ones are
    recognisable only from the list (their closeness to the top candidate), and they are redundant."""
    rng = np.random.default_rng(seed)
    u = _unit(rng.normal(size=(n, 1, D)))
    vectors = np.concatenate(
        [_unit(u + spread * rng.normal(size=(n, n_rel, D))), _unit(rng.normal(size=(n, N - n_rel, D)))], 1
    )
    relevant = np.zeros((n, N), bool)
    relevant[:, :n_rel] = True
    scores = rng.normal(size=(n, N)).astype(np.float32)
    scores[:, 0] = scores.max(axis=1) + 1.0
    order = np.argsort(-scores, axis=1)  # candidate lists come sorted by first-stage score
    rows = np.arange(n)[:, None]
    return Lists(
        vectors.reshape(n * N, D),
        (np.arange(n * N).reshape(n, N))[rows, order],
        scores[rows, order],
        relevant[rows, order],
        np.full(n, n_rel),
    )


def test_training_learns_relevance_and_keeps_the_diversity_floor(one_thread):
    fit, val = _clustered_lists(2, 300, spread=0.5), _clustered_lists(3, 100, spread=0.5)
    cfg = ListwiseConfig(
        diversity_weight=0.3,
        min_ild_gain=0.0,
        k=5,
        dim=16,
        initial_lambdas=[0.5, 1.0, 2.0, 4.0],
        lambda_scales=[1.0, 1.5],
        samples=4,
        batch_size=32,
        steps=40,
        lr=1e-2,
        eval_every=10,
    )
    model, history = train_listwise(fit, val, cfg)
    start, floor = history[0], history[0]["min_ild"]
    assert floor == pytest.approx(start["plain"]["ild"])
    assert [h["step"] for h in history] == [0, 10, 20, 30, 40]
    assert max(h["ndcg"] for h in history) > start["ndcg"] + 0.1  # it learns the relevance the scores miss ...
    assert min(h["ild"] for h in history) < floor  # ... which costs diversity here, so the floor has to bite
    kept = next(h for h in history if h["step"] == start["kept_step"])
    assert kept["ndcg"] == max(h["ndcg"] for h in history if h["ild"] >= floor)
    got = val.evaluate(rerank(model, val.gallery, val.candidates, val.scores))
    assert got == pytest.approx({"ndcg": kept["ndcg"], "ild": kept["ild"]})  # the kept state, λ multiplier included
    assert got["ild"] >= floor and got["ndcg"] > start["ndcg"] and start["kept_step"] > 0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ListwiseConfig(k=1)
    with pytest.raises(ValueError):
        ListwiseConfig(min_ild_gain=-0.1)
