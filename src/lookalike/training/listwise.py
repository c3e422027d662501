"""Training of the list-wise diversity reranker: self-critical policy gradient (Rennie et al., 2017)
plus a supervised relevance loss, with the operating point chosen under a diversity constraint.

The reward of a decoded top-k list is nDCG@k + μ · intra-list diversity (mean pairwise 1 − cosine of
the listed items' vectors, as `lookalike.evaluation.diversity` measures it). Lists are sampled from
the Plackett-Luce policy of the reranker's step-wise scores; the greedy list's reward is the
baseline, so only samples that beat the reranker's own choice are reinforced. The relevance head
also gets a binary cross-entropy on the candidates' relevance labels (`relevance_weight`), which is
far more sample-efficient than the policy gradient alone.

The target is constrained ("raise diversity by ≥ X% while losing as little nDCG as possible"), so
selection is too: the starting λ and the kept checkpoint are those with the best validation nDCG@k
among the ones whose validation ILD@k is at least (1 + `min_ild_gain`) × that of the plain top-k.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from lookalike.errors import LookalikeError
from lookalike.evaluation.diversity import mean_intra_list_diversity
from lookalike.evaluation.metrics import per_query_metrics
from lookalike.retrieval.exact import exact_topk
from lookalike.retrieval.rerank.listwise import ListwiseReranker, decode, rerank, save_reranker
from lookalike.training.trainer import seed_everything


class ListwiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    diversity_weight: float = Field(0.3, ge=0, description="μ in the reward nDCG@k + μ·ILD@k")
    min_ild_gain: float | None = Field(
        0.21,
        ge=0,
        description="selection floor: validation ILD@k ≥ (1 + this) × plain "
        "top-k's; the best validation nDCG@k above it is kept (None: the best reward)",
    )
    relevance_weight: float = Field(0.5, ge=0, description="weight of the supervised relevance (BCE) loss")
    k: int = Field(10, ge=2)
    dim: int = Field(32, ge=8)
    layers: int = Field(1, ge=1)
    initial_lambdas: list[float] = Field(
        [1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0],
        min_length=1,
        description="trade-off weights tried untrained on validation; the best starts training",
    )
    lambda_scales: list[float] = Field(
        [0.8, 1.0, 1.25, 1.5, 2.0],
        min_length=1,
        description="multipliers of the learned λ tried at each evaluation (operating point)",
    )
    samples: int = Field(4, ge=1, description="sampled lists per query and step")
    batch_size: int = Field(32, ge=1)
    steps: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    eval_every: int = Field(25, ge=1)
    seed: int = 42


@dataclass
class Lists:
    """First-stage candidate lists of some queries: gallery (m, D) unit rows; candidates (n, N) gallery
    rows of each list; scores (n, N) first-stage similarities; relevant (n, N) bool; n_relevant (n,)
    relevant items in the whole gallery."""

    gallery: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    relevant: np.ndarray
    n_relevant: np.ndarray

    def evaluate(self, picks: np.ndarray) -> dict[str, float]:
        """nDCG@k and ILD@k of (n, k) positions into the lists."""
        rows = np.arange(len(picks))[:, None]
        return {
            "ndcg": float(
                per_query_metrics(self.relevant[rows, picks], self.n_relevant, [picks.shape[1]])["ndcg@10"].mean()
            ),
            "ild": mean_intra_list_diversity(self.candidates[rows, picks], self.gallery),
        }


def list_reward(
    picks: torch.Tensor, relevant: torch.Tensor, n_relevant: torch.Tensor, vectors: torch.Tensor, mu: float
) -> torch.Tensor:
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


def constrained_best(evaluations: list[dict], min_ild: float | None, mu: float) -> int:
    """Index of the evaluation to keep: the best nDCG among those with ILD ≥ min_ild; if none reaches
    the floor, the most diverse one; with no floor, the best reward nDCG + μ·ILD."""
    if min_ild is None:
        return max(range(len(evaluations)), key=lambda i: evaluations[i]["ndcg"] + mu * evaluations[i]["ild"])
    ok = [i for i, e in enumerate(evaluations) if e["ild"] >= min_ild]
    if not ok:
        return max(range(len(evaluations)), key=lambda i: evaluations[i]["ild"])
    return max(ok, key=lambda i: evaluations[i]["ndcg"])


def train_listwise(train: Lists, val: Lists, cfg: ListwiseConfig) -> tuple[ListwiseReranker, list[dict]]:
    """Train on `train`'s lists, select on `val`'s (see the module doc). History: one entry per evaluation."""
    seed_everything(cfg.seed)
    model = ListwiseReranker(cfg.k, cfg.dim, layers=cfg.layers)
    plain = val.evaluate(np.tile(np.arange(cfg.k), (len(val.candidates), 1)))
    min_ild = None if cfg.min_ild_gain is None else (1 + cfg.min_ild_gain) * plain["ild"]

    def validate() -> dict[str, float]:
        return val.evaluate(rerank(model, val.gallery, val.candidates, val.scores))

    def validate_scales() -> dict[str, float]:
        """The constrained-best of the λ multipliers; leaves the model at multiplier 1 for training."""
        tried = []
        for scale in cfg.lambda_scales:
            model.lambda_scale.fill_(scale)
            tried.append({**validate(), "lambda_scale": scale})
        model.lambda_scale.fill_(1.0)
        return tried[constrained_best(tried, min_ild, cfg.diversity_weight)]

    # Untrained, the reranker is mean-redundancy MMR with trade-off λ: start from the λ selection keeps.
    tried = []
    for lam in cfg.initial_lambdas:
        model.set_lambda(lam)
        tried.append({"lambda": lam, **validate()})
    start = tried[constrained_best(tried, min_ild, cfg.diversity_weight)]
    model.set_lambda(start["lambda"])
    history = [
        {
            "step": 0,
            "lambda": start["lambda"],
            "ndcg": start["ndcg"],
            "ild": start["ild"],
            "plain": plain,
            "min_ild": min_ild,
            "initial_lambdas": tried,
        }
    ]
    best_state = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    g, s = (torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in (train.gallery, train.scores))
    cand = torch.from_numpy(np.asarray(train.candidates, np.int64))
    rel, nrel = torch.from_numpy(train.relevant), torch.from_numpy(np.asarray(train.n_relevant, np.int64))
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        model.train()
        i = torch.randint(len(cand), (cfg.batch_size,), generator=gen)
        c = g[cand[i]]  # (B, N, D) candidate vectors
        r, sim, lam = model(c, s[i])
        with torch.no_grad():
            greedy, _ = decode(r, sim, lam, cfg.k)
            baseline = list_reward(greedy, rel[i], nrel[i], c, cfg.diversity_weight)
        loss = cfg.relevance_weight * F.binary_cross_entropy_with_logits(
            model.calibration(r[..., None]).squeeze(-1), rel[i].float()
        )
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
            history.append({"step": step, **validate_scales(), "elapsed_s": round(time.perf_counter() - t0, 2)})
            if constrained_best(history, min_ild, cfg.diversity_weight) == len(history) - 1:
                best_state = copy.deepcopy(model.state_dict())
                best_state["lambda_scale"].fill_(history[-1]["lambda_scale"])
    history[0]["kept_step"] = history[constrained_best(history, min_ild, cfg.diversity_weight)]["step"]
    model.load_state_dict(best_state)
    return model.eval(), history


def split_by_key(keys: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a (fit, select) split of one split's queries in which no relevance key (attribute
    combination) is on both sides: products with equal attributes are the same query, and the
    reranker would otherwise be selected on the very queries it was trained on."""
    rng = np.random.default_rng(seed)
    fit_keys = rng.permutation(np.unique(keys))[: round(fraction * len(np.unique(keys)))]
    fit = np.isin(keys, fit_keys)
    return np.flatnonzero(fit), np.flatnonzero(~fit)


def candidate_lists(queries: np.ndarray, gallery: np.ndarray, keys: np.ndarray, depth: int) -> Lists:
    """Each query's exact top-`depth` of `gallery` (row i of both = product i; `keys`: relevance classes)."""
    top, scores = exact_topk(queries, gallery, min(depth, len(gallery)))
    return Lists(gallery, top, scores, keys[top] == keys[:, None], np.bincount(keys)[keys])


def train_for_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    cfg: ListwiseConfig,
    depth: int = 100,
    fit_fraction: float = 0.5,
    cache_dir: str | None = None,
    progress: bool = False,
) -> dict:
    """`lookalike train-reranker`: the reranker for a checkpoint's served lists, trained as the reranker study
    trains it (studies/rerankers.py): on the top-`depth` JSON → image lists of the validation queries of half
    the validation relevance keys, selected on the other half (the tower never trained on validation products,
    so their first-stage scores are as reliable as a customer's). Writes the file and returns its summary."""
    from lookalike.evaluation.evaluator import relevance_keys
    from lookalike.pipeline import prepare_checkpoint
    from lookalike.provenance import provenance

    model, rcfg, prep = prepare_checkpoint(checkpoint, cache_dir, progress)
    emb, val = prep.emb, prep.idx["val"]
    fields = rcfg.eval.attribute_fields or emb.catalogue.schema.fields
    keys = np.unique(relevance_keys([emb.products[i] for i in val], fields), return_inverse=True)[1]
    queries = model.encode_attributes([emb.products[i].attributes for i in val])
    lists = candidate_lists(queries, model.space.transform(emb.features[val]), keys, depth)
    fit, select = split_by_key(keys, fit_fraction, cfg.seed)
    if len(fit) == 0 or len(select) == 0:
        raise LookalikeError(f"too few validation queries ({len(val)}) to fit and select a reranker")
    sub = lambda rows: Lists(  # noqa: E731
        lists.gallery, lists.candidates[rows], lists.scores[rows], lists.relevant[rows], lists.n_relevant[rows]
    )
    t = time.perf_counter()
    reranker, history = train_listwise(sub(fit), sub(select), cfg)
    kept = next(e for e in history if e["step"] == history[0]["kept_step"])
    info = {
        "checkpoint": str(checkpoint),
        "depth": depth,
        "fit_queries": len(fit),
        "select_queries": len(select),
        "train_s": round(time.perf_counter() - t, 1),
        "plain": history[0]["plain"],
        "kept": {"step": kept["step"], "ndcg": kept["ndcg"], "ild": kept["ild"]},
        "config": cfg.model_dump(),
        **provenance(),
    }
    save_reranker(reranker, out, info=info, history=history)
    return info
