"""List-wise diversity reranker: it starts as MMR, its reward is the evaluation's metrics, and training
learns relevance that the first-stage scores do not carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.evaluation.diversity import intra_list_diversity
from lookalike.evaluation.metrics import per_query_metrics
from lookalike.retrieval.rerank.listwise import ListwiseReranker, rerank
from lookalike.retrieval.rerank.mmr import mmr
from lookalike.training.listwise import ListwiseConfig, list_reward, train_listwise


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _lists(seed: int, n: int, N: int, D: int, m: int):
    """n random queries, a gallery of m unit vectors, and N distinct random candidates per query."""
    rng = np.random.default_rng(seed)
    gallery, queries = _unit(rng.normal(size=(m, D))), _unit(rng.normal(size=(n, D)))
    return rng, gallery, queries, np.stack([rng.choice(m, N, replace=False) for _ in range(n)])


def test_untrained_reranker_is_mmr_on_standardised_scores():
    n, N, D = 12, 30, 8
    _, gallery, queries, cand = _lists(0, n, N, D, 200)
    scores = np.einsum("nd,nkd->nk", queries, gallery[cand]).astype(np.float32)
    torch.manual_seed(0)
    model = ListwiseReranker(D, dim=16, initial_lambda=0.5)
    picks = rerank(model, queries, gallery, cand, scores, k=10)
    for i in range(n):
        z = (scores[i] - scores[i].mean()) / scores[i].std(ddof=1)
        # z − 0.5·maxsim ranks as MMR with λ·z − (1 − λ)·maxsim when (1 − λ)/λ = 0.5, i.e. λ = 2/3
        assert picks[i].tolist() == mmr(z, gallery[cand[i]], 10, lam=2 / 3).tolist()


def test_reward_is_ndcg_plus_weighted_ild():
    rng = np.random.default_rng(1)
    B, N, D, k = 5, 20, 6, 4
    vectors = _unit(rng.normal(size=(B, N, D)))
    relevant = rng.random((B, N)) < 0.3
    n_rel = relevant.sum(axis=1) + rng.integers(0, 3, B)  # some relevant items beyond the candidates
    picks = np.stack([rng.choice(N, k, replace=False) for _ in range(B)])
    got = list_reward(torch.from_numpy(picks), torch.from_numpy(relevant), torch.from_numpy(n_rel),
                      torch.from_numpy(vectors), mu=0.7).numpy()
    rows = np.arange(B)[:, None]
    ndcg = per_query_metrics(relevant[rows, picks], n_rel, [k])["ndcg@10"]  # depth k < 10: nDCG@k
    ild = np.array([intra_list_diversity(vectors[b, picks[b]]) for b in range(B)])
    np.testing.assert_allclose(got, ndcg + 0.7 * ild, atol=1e-5)


def test_training_learns_relevance_the_scores_miss(one_thread):
    """Relevant candidates are those with a positive first coordinate; first-stage scores are noise."""
    n, N, D = 600, 20, 8
    rng, gallery, queries, cand = _lists(2, n, N, D, 3000)
    scores = rng.normal(size=(n, N)).astype(np.float32)
    relevant = gallery[cand][..., 0] > 0
    n_rel = relevant.sum(axis=1)
    tr, va = slice(0, 500), slice(500, None)

    def val_ndcg(model) -> float:
        picks = rerank(model, queries[va], gallery, cand[va], scores[va], k=5)
        rows = np.arange(len(picks))[:, None]
        return float(per_query_metrics(relevant[va][rows, picks], n_rel[va], [5])["ndcg@10"].mean())

    cfg = ListwiseConfig(diversity_weight=0.0, k=5, dim=16, layers=1, samples=4, batch_size=32, steps=30, lr=1e-2,
                         eval_every=10)
    model, history = train_listwise(queries[tr], gallery, cand[tr], scores[tr], relevant[tr], n_rel[tr], cfg, val_ndcg)
    assert history[0]["step"] == 0 and len(history) == 4
    assert val_ndcg(model) > history[0]["val_reward"] + 0.2


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ListwiseConfig(k=1)
