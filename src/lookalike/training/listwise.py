"""Training of the list-wise diversity reranker: self-critical policy gradient (Rennie et al., 2017).

The reward of a decoded top-k list is nDCG@k + μ · intra-list diversity (mean pairwise 1 − cosine of
the listed items' vectors, as `lookalike.evaluation.diversity` measures it), so μ sets the trade-off.
Lists are sampled from the Plackett-Luce policy of the reranker's step-wise scores; the greedy
list's reward is the baseline, so only samples that beat the reranker's own choice are reinforced.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lookalike.retrieval.rerank.listwise import ListwiseReranker, decode
from lookalike.training.trainer import seed_everything


class ListwiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    diversity_weight: float = Field(1.0, ge=0, description="μ in the reward nDCG@k + μ·ILD@k")
    k: int = Field(10, ge=2)
    dim: int = Field(64, ge=8)
    layers: int = Field(1, ge=1)
    initial_lambdas: list[float] = Field([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], min_length=1,
                                         description="trade-off weights tried untrained on validation; the best starts training")
    samples: int = Field(4, ge=1, description="sampled lists per query and step")
    batch_size: int = Field(32, ge=1)
    steps: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    eval_every: int = Field(50, ge=1)
    seed: int = 42


def list_reward(picks: torch.Tensor, relevant: torch.Tensor, n_relevant: torch.Tensor, vectors: torch.Tensor,
                mu: float) -> torch.Tensor:
    """nDCG@k (binary relevance, ideal over the whole gallery's relevant count) + μ · ILD of each list."""
    rows = torch.arange(len(picks))[:, None]
    k = picks.shape[1]
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    dcg = (relevant[rows, picks].float() * discount).sum(dim=1)
    ideal = torch.cumsum(discount, 0)[(n_relevant.clamp(max=k) - 1).clamp(min=0)] * (n_relevant > 0)
    ndcg = torch.where(ideal > 0, dcg / ideal.clamp(min=1e-12), torch.zeros_like(dcg))
    v = vectors[rows, picks]  # (B, k, D) unit rows
    sims = v @ v.transpose(1, 2)
    ild = 1 - (sims.sum(dim=(1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(dim=1)) / (k * (k - 1))
    return ndcg + mu * ild


def train_listwise(queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray, scores: np.ndarray,
                   relevant: np.ndarray, n_relevant: np.ndarray, cfg: ListwiseConfig,
                   validate: Callable[[ListwiseReranker], float]) -> tuple[ListwiseReranker, list[dict]]:
    """queries (n, D); gallery (m, D) unit rows; candidates (n, N) gallery rows of each query's first-stage
    list; scores (n, N); relevant (n, N) bool; n_relevant (n,) relevant items in the whole gallery.
    `validate` returns the validation reward of greedy decoding."""
    seed_everything(cfg.seed)
    model = ListwiseReranker(queries.shape[1], cfg.dim, layers=cfg.layers)
    # Untrained, the reranker is MMR with trade-off λ: start from the λ that validates best for this μ.
    tried = {}
    for lam in cfg.initial_lambdas:
        with torch.no_grad():
            model.lambda_bias.fill_(float(np.log(np.expm1(lam))))
        tried[lam] = validate(model)
    with torch.no_grad():
        model.lambda_bias.fill_(float(np.log(np.expm1(max(tried, key=tried.get)))))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    q, g, s = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in (queries, gallery, scores))
    cand = torch.from_numpy(np.asarray(candidates, np.int64))
    rel, nrel = torch.from_numpy(relevant), torch.from_numpy(np.asarray(n_relevant, np.int64))
    history = [{"step": 0, "val_reward": max(tried.values()), "initial_lambda_rewards": tried}]
    best, best_state, t0 = history[0]["val_reward"], copy.deepcopy(model.state_dict()), time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model.train()
        i = torch.randint(len(q), (cfg.batch_size,), generator=gen)
        c = g[cand[i]]  # (B, N, D) candidate vectors
        r, sim, lam = model(q[i], c, s[i])
        with torch.no_grad():
            greedy, _ = decode(r, sim, lam, cfg.k)
            baseline = list_reward(greedy, rel[i], nrel[i], c, cfg.diversity_weight)
        loss = 0.0
        for _ in range(cfg.samples):
            picks, log_prob = decode(r, sim, lam, cfg.k, sample=True, generator=gen)
            with torch.no_grad():
                advantage = list_reward(picks, rel[i], nrel[i], c, cfg.diversity_weight) - baseline
            loss = loss - (advantage * log_prob).mean() / cfg.samples
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            reward = validate(model)
            history.append({"step": step, "val_reward": reward, "elapsed_s": round(time.perf_counter() - t0, 2)})
            if reward > best:
                best, best_state = reward, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), history
