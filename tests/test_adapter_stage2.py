"""Stage-2 adapter: losses against hand computations, the hierarchical sampler, PCA start, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lookalike.losses import MultiSimilarityLoss, TripletLoss
from lookalike.towers.adapter import Adapter
from lookalike.training.adapter import AdapterConfig, load_adapter, save_adapter, train_adapter
from lookalike.training.samplers import HierarchicalBatchSampler

# Unit vectors: x0, x1 share label 0; x2, x3 label 1. Cosine distances d01 .4, d02 .2, d12 .04, d03 2, d13 1.6, d23 1.8.
X = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
Y = torch.tensor([0, 0, 1, 1])


def test_triplet_batch_hard_hand_worked():
    # per anchor: relu(hardest pos − hardest neg + .2) = .4, .56, 1.96, .4
    assert TripletLoss(0.2, "hardest")(X, Y).item() == pytest.approx((0.4 + 0.56 + 1.96 + 0.4) / 4, abs=1e-6)


def test_triplet_semi_hard_hand_worked():
    # pairs (0,1) (1,0) (3,2) find a negative farther than the positive → 0; (2,3) has none → hardest (.04): 1.96
    assert TripletLoss(0.2, "semi-hard")(X, Y).item() == pytest.approx(1.96 / 4, abs=1e-6)
    with pytest.raises(ValueError):
        TripletLoss(mining="easy")


def test_multi_similarity_hand_worked():
    x, y = X[:3], Y[:3]  # anchor 2 has no positive and mines nothing
    pos = math.log1p(math.exp(-2 * (0.6 - 0.5))) / 2
    a0 = pos + math.log1p(math.exp(50 * (0.8 - 0.5))) / 50
    a1 = pos + math.log1p(math.exp(50 * (0.96 - 0.5))) / 50
    assert MultiSimilarityLoss()(x, y).item() == pytest.approx((a0 + a1) / 2, rel=1e-5)
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert MultiSimilarityLoss()(separated, torch.tensor([0, 0, 1])).item() == 0.0


def _tree(n_master=2, n_sub=3, n_article=3, per_class=5):
    labels, paths = [], []
    lab = 0
    for m in range(n_master):
        for s in range(n_sub):
            for a in range(n_article):
                for _ in range(per_class):
                    labels.append(lab)
                    paths.append((f"m{m}", f"s{m}.{s}", f"a{m}.{s}.{a}"))
                lab += 1
    return np.array(labels), paths


def test_hierarchical_sampler_puts_siblings_together():
    labels, paths = _tree()
    s = HierarchicalBatchSampler(labels, paths, classes_per_batch=3, samples_per_class=2, seed=0)
    assert len(s) == len(labels) // 6
    for batch in s:
        assert len(batch) == 6 and len(set(batch.tolist())) == 6
        # 3 classes = a whole sub-category: every product in the batch shares master and sub-category
        assert len({paths[i][:2] for i in batch}) == 1
        assert len({labels[i] for i in batch}) == 3
    big = HierarchicalBatchSampler(labels, paths, classes_per_batch=5, samples_per_class=2, seed=0)
    for batch in big:  # a whole sub-category (3 siblings), then 2 cousins from the same master category
        subs = [paths[i][1] for i in batch]
        assert len({paths[i][0] for i in batch}) == 1 and max(subs.count(x) for x in subs) == 6
    again = [b.tolist() for b in HierarchicalBatchSampler(labels, paths, 3, 2, seed=0)]
    assert again == [b.tolist() for b in HierarchicalBatchSampler(labels, paths, 3, 2, seed=0)]
    flat = HierarchicalBatchSampler(labels, [()] * len(labels), 3, 2, seed=0, batches_per_epoch=50)
    assert any(len({paths[i][:2] for i in b}) > 1 for b in flat)  # a flat tree mixes branches


def test_adapter_starts_as_pca_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = Adapter(16, 4, 8).init_pca(x)
    evals, evecs = np.linalg.eigh(x.T.astype(np.float64) @ x)
    top = evecs[:, np.argsort(evals)[::-1][:4]]
    expect = x @ top
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(a.encode(x), expect, atol=1e-5)
    save_adapter(a, AdapterConfig(out_dim=4, hidden_dim=8), tmp_path / "a.pt")
    b, _payload = load_adapter(tmp_path / "a.pt")
    np.testing.assert_allclose(b.encode(x), a.encode(x), atol=1e-6)


def test_training_beats_pca_where_pca_drops_the_labels(one_thread):
    """Class information lives in low-variance directions; PCA to 4-d keeps the loud noise instead."""
    rng = np.random.default_rng(0)
    labels, paths = _tree(per_class=8)
    n, n_cls = len(labels), labels.max() + 1
    centres = rng.normal(size=(n_cls, 6))

    def sample():
        return np.concatenate(
            [centres[labels] + rng.normal(size=(n, 6)) * 0.1, rng.normal(size=(n, 10)) * 1.2], 1
        ).astype(np.float32)

    q, im, val = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (sample(), sample(), sample()))

    def recall_at_1(adapter: Adapter) -> float:
        a, b = adapter.encode(val), adapter.encode(im)
        return float((labels[np.argmax(a @ b.T, axis=1)] == labels).mean())

    cfg = AdapterConfig(
        out_dim=4,
        hidden_dim=32,
        classes_per_batch=6,
        samples_per_class=4,
        epochs=5,
        lr=1e-2,
        patience=6,
        dropout=0.0,
        distill_weight=0.0,
    )
    adapter, history = train_adapter(q, im, labels, paths, cfg, recall_at_1)
    assert history[0]["epoch"] == 0  # PCA alone
    assert recall_at_1(adapter) == max(h["val_metric"] for h in history)
    assert recall_at_1(adapter) > history[0]["val_metric"] + 0.15


def test_cross_modal_triplets_and_distillation():
    from lookalike.training.adapter import distillation

    anchors, images = X[:1], X[1:3]  # the query x0 against the images x1 (same label) and x2 (other label)
    for mining in ("hardest", "semi-hard"):
        assert TripletLoss(0.2, mining)(anchors, Y[:1], images, Y[1:3]).item() == pytest.approx(0.4, abs=1e-6)
    q, im = (
        torch.nn.functional.normalize(torch.randn(6, 8), dim=1),
        torch.nn.functional.normalize(torch.randn(6, 8), dim=1),
    )
    assert distillation(q, im, q, im, 0.05).item() == pytest.approx(0.0, abs=1e-6)  # same ranking: nothing to learn
    assert distillation(q, im.flip(0), q, im, 0.05).item() > 0.1
