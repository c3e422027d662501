"""The studies' commands: `temperature-study`, `tune` (Optuna hyperparameter search), `compare-towers` (MLP vs
coarse-to-fine, ± adapter, regular + cold-start splits), `compare-rerankers` (plain top-10 vs MMR vs the list-wise
reranker), `ab` (binary classifiers, A/B) and `itembank study|build-gt` (the item-bank retrieval study and its
ground truths)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from lookalike.classify.commands import validated
from lookalike.cli import group
from lookalike.cli.options import add_run_options, run_config
from lookalike.errors import LookalikeError
from lookalike.itembank.commands import ITEMBANK_HELP, add_bank_options, bank_path, bank_schema, load_bank

logger = logging.getLogger(__name__)


def _cold(args):
    from lookalike.config import ColdStartConfig

    try:
        return ColdStartConfig(field=args.cold_field, values=args.cold_values, fraction=args.cold_fraction)
    except ValueError as e:
        raise LookalikeError(f"invalid cold-start option: {e}".replace("\n", "; ")) from None


def cmd_compare_towers(args) -> None:
    from lookalike.studies.towers import TOWERS, compare_towers
    from lookalike.training.adapter import AdapterConfig

    cfg = run_config(args).apply_quick()
    unknown = [t for t in args.towers if t not in TOWERS]
    if unknown:
        raise LookalikeError(f"unknown towers {unknown}; choose from {list(TOWERS)}")
    out = Path(args.out or "runs/compare-towers")
    r = compare_towers(
        cfg,
        out,
        AdapterConfig(epochs=args.adapter_epochs, out_dim=args.adapter_dim),
        _cold(args),
        tuple(args.towers),
        tuple(args.splits),
        progress=not args.no_progress,
    )
    for split, block in r["splits"].items():
        for tower, t in block["towers"].items():
            print(
                f"{split:<11} {tower:<15} nDCG@10 {t['test_ndcg@10']:.4f}  +adapter {t['adapter']['test_ndcg@10']:.4f} "
                f" params {t['tower_params']:,}  train {t['train_s']:.0f} s"
            )
        for name, s in block.get("significance", {}).items():
            print(
                f"{split:<11} {name}: Δ {s['mean_diff']:+.4f}, paired t p={s['t_test_p']:.2g}, Wilcoxon "
                f"p={s['wilcoxon_p']:.2g}"
            )
    logger.info(f"wrote {out / 'results.json'} and {out / 'per_query.npz'}")


def cmd_compare_rerankers(args) -> None:
    from lookalike.model import LookalikeModel
    from lookalike.studies.rerankers import compare_rerankers
    from lookalike.training.listwise import ListwiseConfig

    try:
        lcfg = ListwiseConfig(steps=args.steps, min_ild_gain=args.min_ild_gain)
    except ValueError as e:
        raise LookalikeError(f"invalid reranker option: {e}".replace("\n", "; ")) from None
    cfg = LookalikeModel.load(args.model)[0].config.apply_quick()  # the split and data the model was trained on
    updates = {"encoder": cfg.encoder.model_copy(update={"cache_dir": args.cache_dir})} if args.cache_dir else {}
    cfg = cfg.model_copy(update=updates)
    out = Path(args.out or "runs/compare-rerankers")
    out.mkdir(parents=True, exist_ok=True)
    r = compare_rerankers(cfg, Path(args.model), out, lcfg, mus=tuple(args.mu), progress=not args.no_progress)
    for name, m in r["methods"].items():
        print(
            f"{name:<30} nDCG@10 {m['ndcg@10']:.4f}  ILD@10 {m['ild@10']:.4f}  coverage {m['coverage']:.4f}  "
            f"novelty {m['novelty']:.3f}"
        )
    print("\n".join(r["verdict"]))
    logger.info(f"wrote {out / 'rerank.json'}")


def cmd_temperature_study(args) -> None:
    from lookalike.studies.temperature import temperature_study

    cfg = run_config(args)
    if not args.out:
        cfg = cfg.model_copy(update={"out_dir": "runs/temperature-study"})
    temperature_study(cfg, args.temperatures, learnable=not args.no_learnable, progress=not args.no_progress)
    print((Path(cfg.out_dir) / "temperature_study.md").read_text(encoding="utf-8"), end="")
    logger.info(f"wrote {cfg.out_dir}/temperature_study.md, .csv, .json and .png")


def cmd_tune(args) -> None:
    from pydantic import ValidationError

    from lookalike.studies.tune import TuneOptions, tune

    try:
        opts = TuneOptions(
            out=args.out or "runs/tune",
            space=args.space,
            trials=args.trials,
            timeout=args.timeout,
            max_epochs=args.max_epochs,
            jobs=args.jobs,
            storage=args.storage,
            study_name=args.study_name,
            pruner=args.pruner,
            engine=args.engine,
            address=args.address,
            seeds=args.seeds,
            sampler_seed=args.sampler_seed,
            heartbeat=args.heartbeat,
            final=not args.no_final,
            ensemble=args.ensemble,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise LookalikeError(f"invalid tune option --{'-'.join(map(str, err['loc']))}: {err['msg']}") from None
    r = tune(run_config(args), opts, progress=not args.no_progress)
    b = r["budget"]
    print(
        f"trials {b['trials']}: {b['complete']} complete, {b['pruned']} pruned, {b['fail']} failed; epochs run "
        f"{b['epochs_run']} of {b['epochs_planned']} planned (pruning saved {b['epochs_saved_by_pruning']}, "
        f"{b['epochs_saved_by_pruning_share']:.0%}; early stopping {b['epochs_saved_by_early_stopping']})"
    )
    print(f"best trial {r['best_trial']['number']}: validation {r['best_trial']['validation']:.4f}")
    if "best" in r:
        d, t = r["default"], r["best"]
        print(f"{'':<55} {'default':>8} {'best':>8} {'Δ (seeds)':>10} {'p':>7}")
        print(f"{'validation (corrected)':<55} {d['validation']:>8.4f} {t['validation']:>8.4f}")
        for k, v in t["test"].items():
            pr = r["seeds"]["paired"][k]
            p_txt = f"{pr['p']:.2g}" if pr["p"] is not None else "-"
            print(f"{'test ' + k:<55} {d['test'][k]:>8.4f} {v:>8.4f} {pr['mean_diff']:>+10.4f} {p_txt:>7}")
    ens = r.get("ensemble")
    if ens is not None and not ens["built"]:
        print(f"ensemble not built: {ens['reason']}")
    elif ens is not None:
        print(f"ensemble of trials {[m['trial'] for m in ens['members']]}: validation {ens['validation']:.4f}")
        for k, v in (ens["test"] or {}).items():
            print(f"{'ensemble test ' + k:<55} {v:>8.4f}")
    logger.info(f"wrote {opts.out}/best_config.json, tuning_report.json, plots/ and final/")


def cmd_ab(args) -> None:
    from lookalike.studies.classifier_ab import ABConfig, run_ab

    cfg = validated(
        ABConfig,
        {
            "data": args.data,
            "models": args.models,
            "out_dir": args.out,
            "split": args.split,
            "val_fraction": args.val_fraction,
            "limit": args.limit,
            "test_limit": args.test_limit,
            "seed": args.seed,
            "fixed_threshold": args.threshold,
            "n_boot": args.n_boot,
        },
    )
    t = time.perf_counter()
    res = run_ab(cfg, progress=not args.no_progress)
    wall = time.perf_counter() - t
    d = res["data"]
    print(
        f"\n{d['val']['n']} validation images (thresholds), {d['test']['n']} test images; "
        f"skipped while loading: {sum(d['load_report']['skipped'].values())}"
    )
    print(
        f"{'model':<14} {'ROC AUC [DeLong 95% CI]':<26} {'thr(val)':>8} {'acc@thr [bootstrap CI]':<24} "
        f"{'F1@thr':>7} {'acc@' + str(cfg.fixed_threshold):>8}"
    )
    for m in res["models"]:
        t_, ci = m["test"], m["test"]["bootstrap_ci"]["at_tuned"]["accuracy"]
        lo, hi = t_["roc_auc_delong_ci"]
        print(
            f"{m['name']:<14} {t_['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]      {m['threshold']['tuned']:>8.3g} "
            f"{t_['at_tuned']['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]     {t_['at_tuned']['f1']:>7.3f} "
            f"{t_['at_fixed']['accuracy']:>8.3f}"
        )
    for p in res["pairs"]:
        a, c = p["roc_auc"], p["accuracy_at_tuned"]
        print(
            f"{p['a']} vs {p['b']}: ΔAUC {a['diff']:+.3f} (DeLong p={a['p_value']:.2g}), "
            f"Δacc {c['diff']:+.3f} (McNemar p={c['mcnemar']['p_value']:.2g})"
        )
    flags = (
        res["flags"]
        + [f"{m['name']}: {f}" for m in res["models"] for f in m["flags"]]
        + [f for p in res["pairs"] for f in p["flags"]]
    )
    for f in flags:
        print(f"FLAG: {f}")
    logger.info(f"wrote {cfg.out_dir}/report.html, ab.json, charts/*.png")
    logger.info(f"wall time {wall:.1f} s")


def add_judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of the LLM judge, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="judge")
    p.add_argument("--judge-api-key-env", help="environment variable holding the judge's API key")
    p.add_argument("--judge-cache", help="JSON Lines cache of judgements (default OUT/judge_cache.jsonl)")
    p.add_argument("--judge-timeout", type=float, default=30.0)
    p.add_argument("--judge-queries", type=int, default=200, help="judge a seeded sample of N queries")
    p.add_argument("--judge-pool", type=int, default=10, help="judge each query's top-N of dense, BM25 and TF-IDF")
    p.add_argument(
        "--judge-scale",
        choices=["binary", "1-5"],
        default="binary",
        help="the judge answers yes/no, or grades 1-5 (a graded GT: nDCG on the grades, the rest at --grade-threshold)",
    )
    p.add_argument("--judge-max-figures", type=int, default=2, help="figures sent per question as image parts")
    p.add_argument(
        "--grade-threshold", type=int, help="grade from which a graded pair is relevant (default 3 on the 1-5 scale)"
    )


def judge_config(args, out: Path):
    from lookalike.itembank.judge import JudgeConfig

    if not args.judge_url:
        return None
    return JudgeConfig(
        base_url=args.judge_url,
        model=args.judge_model,
        api_key_env=args.judge_api_key_env,
        timeout_s=args.judge_timeout,
        cache=args.judge_cache or str(out / "judge_cache.jsonl"),
        scale=args.judge_scale,
        max_figures=args.judge_max_figures,
    )


def study_config_from(values: dict):
    """A StudyConfig, or the first validation problem as one CLI error line."""
    from pydantic import ValidationError

    from lookalike.studies.itembank import StudyConfig

    try:
        return StudyConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        raise LookalikeError(
            f"invalid study config: {'.'.join(map(str, err['loc'])) or 'study'}: {err['msg']}"
        ) from None


def study_config(args):
    raw = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    out = Path(args.out or raw.get("out_dir", "runs/itembank-study"))
    flags = {
        "data": args.data or raw.get("data") or bank_path(args),
        "schema": bank_schema(args).model_dump(),
        "preset": None,
        "limit": args.limit,
        "seed": args.seed,
        "encoder": args.encoder,
        "cache_dir": args.cache_dir,
        "out_dir": str(out),
        "gts": args.gt,
        "alphas": args.alphas,
        "reranker": args.reranker,
        "judge_queries": args.judge_queries,
        "judge_pool": args.judge_pool,
        "threshold": args.grade_threshold,
        "ranx_check": False if args.no_ranx_check else None,
    }
    judge = judge_config(args, out)
    if judge:
        flags["judge"] = judge.model_dump()
    return study_config_from({**raw, **{k: v for k, v in flags.items() if v is not None}})


def cmd_itembank_study(args) -> None:
    from lookalike.studies.itembank import fmt_p, run_study

    cfg = study_config(args)
    s = run_study(cfg, progress=not args.no_progress)
    skipped = s["load_report"]["skipped"]
    print(f"{s['n_items']} items ({sum(skipped.values())} skipped: {skipped or 'none'})")
    for gname, res in s["results"].items():
        g, t = res["gt"], res["table"]
        grades = g["grades"]
        print(
            f"\nGT {gname}: qrels {g['path']} ({g['queries']} queries, {g['pairs']} pairs; {grades['scale']} grades, "
            f"relevant from {grades['threshold']})"
        )
        if "winner" not in res:
            print(f"  {res['note']}")
            continue
        w = res["winner"]
        for r in dict.fromkeys([w, "dense", "bm25", "rrf"]):
            print(
                f"  {r:<14} nDCG@10 {t[r]['ndcg@10']:.4f} (binarised {t[r]['ndcg@10_binary']:.4f})  "
                f"MRR {t[r]['mrr']:.4f}  hit@1 {t[r]['hit@1']:.4f}  "
                f"hit@10 {t[r]['hit@10']:.4f}  recall@10 {t[r]['recall@10']:.4f}  MAP {t[r]['map']:.4f}"
            )
        bt = res["best_two"]["tests"]["ndcg@10"]
        print(
            f"  winner {w}; vs runner-up {res['best_two']['b']}: nDCG@10 {bt['diff']:+.4f}, "
            f"Fisher p={fmt_p(bt['fisher_p'])}, paired t p={fmt_p(bt['t_p'])}"
        )
        for single, c in res["hybrid_vs_single_on_test"].items():
            n, m = c["ndcg@10"], c["mrr"]
            print(
                f"  hybrid {res['best_hybrid_on_dev']} (α chosen on {res['n_dev']} dev queries) vs {single} on "
                f"{res['n_test']} test queries: nDCG@10 {n['diff']:+.4f} (Fisher p={fmt_p(n['fisher_p'])}, t "
                f"p={fmt_p(n['t_p'])}), MRR {m['diff']:+.4f} (Fisher p={fmt_p(m['fisher_p'])}, t p={fmt_p(m['t_p'])})"
            )
        if "rerank" in res:
            rr = res["rerank"]
            n = rr["vs_base"]["ndcg@10"]
            print(
                f"  reranked {rr['base']} top-{rr['depth']} ({rr['n_test']} test queries): nDCG@10 "
                f"{rr['table']['ndcg@10']:.4f} vs {rr['base_table']['ndcg@10']:.4f} (binarised "
                f"{rr['table']['ndcg@10_binary']:.4f} vs {rr['base_table']['ndcg@10_binary']:.4f}) "
                f"({n['diff']:+.4f}, Fisher "
                f"p={fmt_p(n['fisher_p'])}), MRR {rr['table']['mrr']:.4f} vs {rr['base_table']['mrr']:.4f}; "
                f"{rr['rerank_s']:.1f} s"
            )
    if s["ranx_check"]:
        rc = s["ranx_check"]
        print(
            f"\nranx cross-check ({rc['gt']}, {rc['run']}): metrics max |diff| {rc['metric_max_abs_diff']:.2e}; "
            f"Fisher p nDCG@10 ranx {rc['fisher']['ndcg@10']['ranx']:.3g} vs ours "
            f"{rc['fisher']['ndcg@10']['ours']:.3g}; "
            f"t p ranx {rc['student']['ndcg@10']['ranx']:.3g} vs ours {rc['student']['ndcg@10']['ours']:.3g}"
        )
    out = Path(cfg.out_dir)
    logger.info(f"wrote {out / 'study.md'}, study.csv, study.json, study_alpha.png, qrels/, runs/")


def cmd_build_gt(args) -> None:
    from lookalike.provenance import provenance
    from lookalike.studies.itembank import build_gts, retriever_runs

    out = Path(args.out)
    judge = judge_config(args, out)
    cfg = study_config_from(
        {
            "data": bank_path(args),
            "schema": bank_schema(args).model_dump(),
            "preset": None,
            "limit": args.limit,
            "seed": args.seed,
            "encoder": args.encoder,
            "cache_dir": args.cache_dir,
            "gts": [args.kind],
            "tfidf_top_n": args.top_n,
            "tfidf_threshold": args.threshold,
            "judge": judge.model_dump() if judge else None,
            "judge_queries": args.judge_queries,
            "judge_pool": args.judge_pool,
            "threshold": args.grade_threshold,
            "out_dir": str(out),
        }
    )
    bank = load_bank(args)
    runs = retriever_runs(bank, cfg, not args.no_progress)[0] if args.kind in ("llm", "hybrid") else {}
    g = build_gts(bank, cfg, runs, out, not args.no_progress)[args.kind]
    meta = {
        **{k: v for k, v in g.items() if k not in ("qrels", "grading")},
        "config": json.loads(cfg.model_dump_json(by_alias=True)),
        "provenance": provenance(),
    }
    (out / "qrels" / f"{args.kind}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    print(f"GT {args.kind}: {g['queries']} queries, {g['pairs']} pairs → {g['path']} (sha1 {g['sha1'][:12]})")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-towers", help="MLP vs coarse-to-fine tower, ± 128-d adapter, regular and cold-start splits"
    )
    add_run_options(p)
    p.add_argument("--towers", nargs="+", default=["mlp", "coarse-to-fine"])
    p.add_argument("--splits", nargs="+", choices=["regular", "cold-start"], default=["regular", "cold-start"])
    p.add_argument(
        "--cold-field", default="articleType", help="field whose held-out values make the cold-start test split"
    )
    p.add_argument(
        "--cold-values", nargs="+", help="values to hold out (default: chosen by hash to cover --cold-fraction)"
    )
    p.add_argument("--cold-fraction", type=float, default=0.1)
    p.add_argument("--adapter-dim", type=int, default=128)
    p.add_argument(
        "--adapter-epochs", type=int, default=36, help="stage-2 adapter epochs (early-stopped on validation)"
    )
    p.set_defaults(func=cmd_compare_towers)

    r = sub.add_parser("compare-rerankers", help="plain top-10 vs MMR vs the learned list-wise diversity reranker")
    r.add_argument("--model", required=True, help="trained checkpoint; its own catalogue, split and tower are used")
    r.add_argument("--out", help="output directory (default runs/compare-rerankers)")
    r.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike or $LOOKALIKE_CACHE)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--steps", type=int, default=200, help="training steps of each list-wise reranker")
    r.add_argument("--mu", type=float, nargs="+", default=[0.2, 0.3, 0.5], help="diversity weights to train")
    r.add_argument(
        "--min-ild-gain",
        type=float,
        default=0.21,
        help="selection floor: validation ILD@10 at least (1 + this) × plain top-10's (default 0.21)",
    )
    r.set_defaults(func=cmd_compare_rerankers)

    ts = sub.add_parser("temperature-study", help="train at several temperatures on one split and compare")
    add_run_options(ts)
    ts.add_argument("--temperatures", type=float, nargs="+")
    ts.add_argument("--no-learnable", action="store_true", help="skip the learnable-temperature run")
    ts.set_defaults(func=cmd_temperature_study)

    tn = sub.add_parser("tune", help="hyperparameter search on Optuna (TPE + pruning); test only after the study")
    add_run_options(tn)
    tn.add_argument("--space", help="search space JSON (default: the packaged configs/tune-space.json)")
    tn.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (default 20)")
    tn.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    tn.add_argument("--max-epochs", type=int, help="at most E epochs a trial (the pruner's largest budget)")
    tn.add_argument("--jobs", type=int, default=1, help="trials at once in this process (threads)")
    tn.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql://… shared by many processes (default sqlite:///OUT/study.db)",
    )
    tn.add_argument("--study-name", default="lookalike-tune")
    tn.add_argument("--pruner", choices=["hyperband", "median", "none"], default="hyperband")
    tn.add_argument("--engine", choices=["local", "ray"], default="local", help="run trials here or on Ray Tune")
    tn.add_argument("--address", help="Ray cluster address HOST:PORT (--engine ray; default: a local Ray)")
    tn.add_argument("--seeds", type=int, default=3, help="seeds of the default-vs-best comparison on test")
    tn.add_argument("--sampler-seed", type=int, help="TPE's seed (default: the config's train.seed)")
    tn.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between a trial's heartbeats (a dead process's trial is retried after two)",
    )
    tn.add_argument("--no-final", action="store_true", help="run the study only: no retraining, no test split")
    tn.add_argument(
        "--ensemble",
        type=int,
        default=0,
        metavar="K",
        help="after the study, average the K best complete trials into OUT/ensemble.pt, validated and tested (K >= 2)",
    )
    tn.set_defaults(func=cmd_tune)

    a = sub.add_parser("ab", help="compare binary image classifiers: DeLong, McNemar, bootstrap CIs, HTML report")
    a.add_argument("--data", required=True, help="folder with positives/ and negatives/, or a CSV path,label")
    a.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="two or more of: haar, fer, path/to/model.onnx; optionally label=spec",
    )
    a.add_argument("--out", help="output folder (default runs/ab)")
    a.add_argument("--split", help="split.json from finetune-classifier: thresholds on its val, metrics on its test")
    a.add_argument("--val-fraction", type=float, help="without --split: share of images used to tune thresholds (0.3)")
    a.add_argument("--limit", type=int, help="stratified subsample of N images (validation + test)")
    a.add_argument("--test-limit", type=int, help="stratified subsample of N test images")
    a.add_argument("--threshold", type=float, help="the fixed threshold reported besides the tuned one (0.5)")
    a.add_argument("--n-boot", type=int, help="bootstrap resamples (1000)")
    a.add_argument("--seed", type=int)
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_ab)

    isub = group(sub, "itembank", ITEMBANK_HELP)
    st = isub.add_parser("study", help="dense vs BM25 vs hybrid over α (and RRF, reranker) on every GT")
    add_bank_options(st)
    add_judge_options(st)
    st.add_argument("--config", help="JSON StudyConfig; flags override it")
    st.add_argument("--out", help="output directory (default runs/itembank-study)")
    st.add_argument("--gt", nargs="+", choices=["label", "tfidf", "llm", "hybrid"])
    st.add_argument("--alphas", type=float, nargs="+")
    st.add_argument("--reranker", help="'learned' (pair features, fitted on dev queries) or hf-cross-encoder:<dir>")
    st.add_argument(
        "--no-ranx-check",
        action="store_true",
        help="skip recomputing the winner with ranx (saves its JIT compilation: ranx_check_s in the timings)",
    )
    st.set_defaults(func=cmd_itembank_study)

    gt = isub.add_parser("build-gt", help="write one ground truth as a TREC qrels file")
    add_bank_options(gt)
    add_judge_options(gt)
    gt.add_argument("--kind", choices=["label", "tfidf", "llm", "hybrid"], required=True)
    gt.add_argument("--top-n", type=int, default=10, help="TF-IDF neighbours per item")
    gt.add_argument("--threshold", type=float, default=0.3, help="TF-IDF cosine threshold")
    gt.add_argument("--out", required=True, help="output directory (qrels/<kind>.qrels and .json)")
    gt.set_defaults(func=cmd_build_gt)
