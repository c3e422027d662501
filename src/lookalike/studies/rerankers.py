"""Diversity reranking study: plain top-10 vs MMR (a λ sweep) vs the learned list-wise reranker (a μ
sweep), all reordering the same top-100 candidate lists of JSON → image search on the test gallery.

Metrics: attribute nDCG@10 (as the core evaluator), intra-list diversity@10 of the gallery image
vectors, catalogue coverage over the test gallery and novelty (`lookalike.evaluation.diversity`, the
Microsoft Recommenders definitions). Novelty needs a popularity model; a look-alike catalogue has no
interaction log, so an item's popularity is the number of training products of its article type.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lookalike.config import RunConfig
from lookalike.evaluation.diversity import catalogue_coverage, mean_intra_list_diversity, novelty
from lookalike.evaluation.evaluator import relevance_keys
from lookalike.evaluation.metrics import per_query_metrics
from lookalike.model import LookalikeModel
from lookalike.pipeline import prepare
from lookalike.provenance import provenance
from lookalike.retrieval.exact import exact_topk
from lookalike.retrieval.rerank.listwise import ListwiseReranker, rerank
from lookalike.retrieval.rerank.mmr import mmr
from lookalike.training.listwise import Lists, ListwiseConfig, constrained_best, split_by_key, train_listwise

logger = logging.getLogger(__name__)


class CandidateLists:
    """Top-N candidates of each query of one split, with what the metrics need."""

    def __init__(self, model: LookalikeModel, products: list, features: np.ndarray, fields: list[str], depth: int):
        self.ids = [p.id for p in products]
        self.queries = model.encode_attributes([p.attributes for p in products])
        self.gallery = model.space.transform(features)
        self.top, self.scores = exact_topk(self.queries, self.gallery, depth)
        self.keys = np.unique(relevance_keys(products, fields), return_inverse=True)[1]
        self.relevant = self.keys[self.top] == self.keys[:, None]
        self.n_relevant = np.bincount(self.keys)[self.keys]

    def subset(self, rows: np.ndarray) -> Lists:
        return Lists(self.gallery, self.top[rows], self.scores[rows], self.relevant[rows], self.n_relevant[rows])

    def metrics(self, picks: np.ndarray, popularity: dict[str, int] | None = None) -> dict:
        """picks: (n, k) positions into each candidate list."""
        rows = np.arange(len(picks))[:, None]
        chosen = self.top[rows, picks]
        out = {
            "ndcg@10": float(per_query_metrics(self.relevant[rows, picks], self.n_relevant, [10])["ndcg@10"].mean()),
            "ild@10": mean_intra_list_diversity(chosen, self.gallery),
        }
        lists = [[self.ids[j] for j in row] for row in chosen]
        out["coverage"] = catalogue_coverage(lists, self.ids)
        if popularity is not None:
            out["novelty"] = novelty(lists, popularity)
        return out


def mmr_picks(lists: Lists, lam: float, k: int = 10) -> np.ndarray:
    return np.stack(
        [mmr(lists.scores[i], lists.gallery[lists.candidates[i]], k, lam) for i in range(len(lists.candidates))]
    )


def _at_same_diversity(sweep: list[dict], ild: float) -> float | None:
    """MMR's nDCG@10 at diversity `ild`, linearly interpolated along its λ sweep (None outside it)."""
    pts = sorted((m["ild@10"], m["ndcg@10"]) for m in sweep)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return float(np.interp(ild, xs, ys)) if xs[0] <= ild <= xs[-1] else None


def compare_rerankers(
    cfg: RunConfig,
    checkpoint: Path,
    out_dir: Path,
    lcfg: ListwiseConfig,
    mmr_lambdas: tuple[float, ...] = (0.95, 0.9, 0.85, 0.83, 0.8, 0.78, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3),
    mus: tuple[float, ...] = (0.2, 0.3, 0.5),
    fit_fraction: float = 0.5,
    depth: int = 100,
    progress: bool = False,
) -> dict:
    """The list-wise reranker is trained on the validation queries of half the validation relevance
    keys and selected (initial λ, checkpoint, then μ) on the other half: best nDCG@10 among those
    raising ILD@10 by ≥ `lcfg.min_ild_gain`. The tower never trained on validation products, so their
    first-stage scores are as (un)reliable as on test; training lists are not used (their scores are
    overconfident). Everything is then reported on test, which nothing here was chosen on."""
    model, _ = LookalikeModel.load(checkpoint)
    prep = prepare(cfg, progress)
    emb = prep.emb
    fields = cfg.eval.attribute_fields or emb.catalogue.schema.fields
    lists = {}
    for split in ("val", "test"):
        idx = prep.idx[split]
        lists[split] = CandidateLists(model, [emb.products[i] for i in idx], emb.features[idx], fields, depth)
    type_field = "articleType" if "articleType" in emb.catalogue.schema.fields else emb.catalogue.schema.category_field
    type_counts = Counter(emb.products[i].value(type_field) for i in prep.idx["train"])
    popularity = {emb.products[i].id: type_counts[emb.products[i].value(type_field)] for i in prep.idx["test"]}
    test, val = lists["test"], lists["val"]
    fit_rows, select_rows = split_by_key(val.keys, fit_fraction, lcfg.seed)
    select = val.subset(select_rows)
    plain = np.tile(np.arange(10), (len(test.top), 1))
    methods = {"top-10": {**test.metrics(plain, popularity), "ms_per_query": 0.0}}
    sweep = []
    for lam in mmr_lambdas:
        t = time.perf_counter()
        picks = mmr_picks(test.subset(np.arange(len(test.top))), lam)
        m = {
            **test.metrics(picks, popularity),
            "ms_per_query": (time.perf_counter() - t) * 1000 / len(picks),
            "lambda": lam,
            "select": select.evaluate(mmr_picks(select, lam)),
        }
        methods[f"MMR λ={lam}"] = m
        sweep.append(m)
    selected: dict[float, dict[str, float]] = {}
    for mu in mus:
        logger.info(f"training the list-wise reranker, μ = {mu}")
        t = time.perf_counter()
        reranker, history = train_listwise(
            val.subset(fit_rows), select, lcfg.model_copy(update={"diversity_weight": mu})
        )
        train_s = time.perf_counter() - t
        if not selected:  # the untrained start does not depend on μ: report it once, as the ablation of training
            start = history[0]
            lam = start["lambda"]
            untrained = ListwiseReranker(
                lcfg.k, lcfg.dim, layers=lcfg.layers, initial_lambda=lam
            )  # heads start at zero
            t = time.perf_counter()
            picks = rerank(untrained, test.gallery, test.top, test.scores)
            methods[f"list-wise untrained (λ={lam})"] = {
                **test.metrics(picks, popularity),
                "ms_per_query": (time.perf_counter() - t) * 1000 / len(picks),
                "select": {"ndcg": start["ndcg"], "ild": start["ild"]},
            }
        t = time.perf_counter()
        picks = rerank(reranker, test.gallery, test.top, test.scores)
        ms = (time.perf_counter() - t) * 1000 / len(picks)
        kept = next(e for e in history if e["step"] == history[0]["kept_step"])
        selected[mu] = {"ndcg": kept["ndcg"], "ild": kept["ild"]}
        methods[f"list-wise μ={mu}"] = {
            **test.metrics(picks, popularity),
            "ms_per_query": ms,
            "mu": mu,
            "train_s": round(train_s, 1),
            "select": selected[mu],
            "history": history,
            "params": sum(p.numel() for p in reranker.parameters()),
        }
    for name, m in methods.items():
        if name.startswith("list-wise"):
            m["mmr_ndcg_at_same_ild"] = _at_same_diversity(sweep, m["ild@10"])
    base = methods["top-10"]
    mu = list(selected)[constrained_best(list(selected.values()), history[0]["min_ild"], 0.0)]
    m = methods[f"list-wise μ={mu}"]
    start = m["history"][0]
    same = m["mmr_ndcg_at_same_ild"]
    gain = lcfg.min_ild_gain or 0.0
    verdict = [
        f"chosen on validation: μ={mu}, step {start['kept_step']} (best selection-half nDCG@10 "
        f"{m['select']['ndcg']:.4f} among those raising its ILD@10 ≥ {gain:.0%}: "
        f"{m['select']['ild'] / start['plain']['ild'] - 1:+.1%}, nDCG "
        f"{m['select']['ndcg'] / start['plain']['ndcg'] - 1:+.1%})",
        f"  test ILD@10 {m['ild@10'] / base['ild@10'] - 1:+.1%} (target ≥ +20%): "
        f"{'MET' if m['ild@10'] >= 1.2 * base['ild@10'] else 'NOT MET'}",
        f"  test nDCG@10 {m['ndcg@10'] / base['ndcg@10'] - 1:+.1%} (target ≥ −5%): "
        f"{'MET' if m['ndcg@10'] >= 0.95 * base['ndcg@10'] else 'NOT MET'}",
        f"  MMR at the same ILD: nDCG@10 {same:.4f} vs list-wise {m['ndcg@10']:.4f}: "
        f"{'list-wise ≥ MMR' if m['ndcg@10'] >= same else 'MMR better'}"
        if same is not None
        else "  MMR sweep does not reach that ILD",
    ]
    mmr_chosen = sweep[constrained_best([m["select"] for m in sweep], start["min_ild"], 0.0)]
    verdict.append(
        f"  MMR chosen the same way on validation: λ={mmr_chosen['lambda']}, test nDCG@10 "
        f"{mmr_chosen['ndcg@10'] / base['ndcg@10'] - 1:+.1%}, ILD@10 {mmr_chosen['ild@10'] / base['ild@10'] - 1:+.1%}"
    )
    result = {
        **provenance(),
        "model": str(checkpoint),
        "candidates": depth,
        "n_queries": len(test.top),
        "fit_queries": len(fit_rows),
        "select_queries": len(select_rows),
        "listwise_config": lcfg.model_dump(),
        "popularity": f"training products of the same {type_field}",
        "methods": methods,
        "verdict": verdict,
    }
    (out_dir / "rerank.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return result
