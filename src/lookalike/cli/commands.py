"""The core commands: train (the main job), evaluate, search, centrality, sanity-check, embed, models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lookalike.cli.options import (
    CATALOG,
    add_device_option,
    add_run_options,
    add_training_options,
    default_data,
    default_help,
    require_checkpoint,
    run_config,
    with_catalog,
)
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)


def cmd_train(args) -> None:
    from lookalike.pipeline import run_main

    s = run_main(run_config(args), resume=args.resume, progress=not args.no_progress)
    print("\nTest split (whole gallery, products never seen in training):")
    for k, v in s["headline"].items():
        print(f"  {k:<45} {v:.4f}")
    print(f"\ntimings: {json.dumps(s['timings'])}")
    print("\nartifacts:")
    for k in ("checkpoint", "training_results", "training_charts", "evaluation", "runs", "similarity_search"):
        print(f"  {k:<18} {s[k]}")


def cmd_evaluate(args) -> None:
    require_checkpoint(args.model)
    from lookalike.catalogue.loading import read_schema
    from lookalike.evaluation.evaluate import evaluate_checkpoint

    ev = evaluate_checkpoint(
        args.model,
        args.catalog,
        args.out,
        read_schema(Path(args.schema)) if args.schema else None,
        args.cache_dir,
        progress=not args.no_progress,
        device=args.device,
    )
    for k, v in ev["headline"].items():
        print(f"  {k:<45} {v:.4f}")
    logger.info(f"wrote {Path(args.out) / 'evaluation.json'} and TREC runs/qrels in {args.out}")


def cmd_search(args) -> None:
    given = [x for x in (args.json, args.text, args.image, args.product) if x is not None]
    if len(given) != 1:
        raise LookalikeError("give exactly one query: --json, --text, --image or --product")
    require_checkpoint(args.model)
    from lookalike.retrieval.search import Searcher

    catalog = args.catalog or default_data(CATALOG, "--catalog")
    from lookalike.inference import QueryEncoder

    if bool(args.reranker) != bool(args.reranker_model):
        raise LookalikeError("--reranker listwise and --reranker-model FILE go together")
    rerank = None
    if args.reranker_model:
        from lookalike.retrieval.ranking import Rerank
        from lookalike.retrieval.rerank.listwise import load_reranker

        rerank = Rerank(load_reranker(args.reranker_model), args.reranker_depth)
    enc = QueryEncoder.load(args.model, args.cache_dir, args.device)
    s = Searcher.open(enc, catalog, args.cache_dir, progress=not args.no_progress)
    s.rerank = rerank
    unknown: dict[str, list[str]] = {}
    ignored: list[str] = []
    if args.json is not None:
        raw = Path(args.json).read_text(encoding="utf-8") if Path(args.json).is_file() else args.json
        try:
            query = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LookalikeError(f"--json is neither a file nor valid JSON: {e}") from None
        hits, unknown, ignored = s.by_attributes(query, args.k)
    elif args.text is not None:
        hits = s.by_text(args.text, args.k)
    elif args.image is not None:
        hits = s.by_image(args.image, args.k)
    else:
        hits = s.by_product(args.product, args.k)
    if unknown:
        logger.warning(f"note: values unseen in training were searched as unknown: {unknown}")
    if ignored:
        logger.warning(f"note: fields the model does not use were ignored: {ignored}")
    if args.format == "json":
        print(json.dumps([h.__dict__ for h in hits], ensure_ascii=False, indent=1))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:>3}  {h.score:.4f}  {h.id:<14} {json.dumps(h.attributes, ensure_ascii=False)}")


def cmd_centrality(args) -> None:
    import numpy as np

    from lookalike.catalogue import load_catalogue
    from lookalike.encoders.embedding import embed_catalogue
    from lookalike.evaluation.centrality import centrality_report, centrality_scores

    cfg = run_config(args)
    cat = load_catalogue(cfg.data.catalog, cfg.data.schema_, cfg.data.format)
    sales_by_id = _read_sales(Path(args.sales)) if args.sales else None  # a bad file fails before minutes of embedding
    emb = embed_catalogue(cat, cfg, progress=not args.no_progress, texts=False)
    scores = centrality_scores(emb.features)
    field = emb.catalogue.schema.category_field
    sales = None
    if sales_by_id is not None:
        sales = np.array([sales_by_id.get(p.id, np.nan) for p in emb.products])
    elif any(p.sales is not None for p in emb.products):
        sales = np.array([np.nan if p.sales is None else p.sales for p in emb.products])
    if args.group_by == "style":
        from lookalike.catalogue.kfashion import style_group

        groups = [style_group(p) for p in emb.products]
    else:
        groups = [p.value(field) if field else "" for p in emb.products]
    rep = centrality_report(
        scores,
        groups,
        args.fraction,
        sales,
        [p.id for p in emb.products],
    )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "centrality.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False))
    with open(out / "centrality.csv", "w") as f:
        f.write("id,category,centrality,anchor\n")
        thr = rep["threshold"]
        for p, g, c in zip(emb.products, groups, scores):
            f.write(f"{p.id},{g},{c:.6f},{int(c >= thr)}\n")
    print(
        f"{rep['n']} products, anchors (top {args.fraction:.0%}): {rep['n_anchors']}; mean centrality "
        f"all {rep['mean_all']:.4f}, anchors {rep['mean_anchor']:.4f} "
        f"({'OK' if rep['check_anchor_mean_exceeds_overall'] else 'CHECK FAILED'}: anchor mean > overall mean)"
    )
    if "sales" in rep:
        print(
            f"Spearman rank correlation centrality vs sales: {rep['sales']['spearman_rho']:.4f} "
            f"(p={rep['sales']['p_value']:.3g}, n={rep['sales']['n']})"
        )
    logger.info(f"wrote {out / 'centrality.json'} and {out / 'centrality.csv'}")


def _read_sales(path: Path) -> dict[str, float]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise LookalikeError(f"sales file not found: {path}") from None
    if not rows or not {"id", "sales"} <= set(rows[0]):
        raise LookalikeError(f"{path}: expected a CSV with columns id,sales")
    by_id = {}
    for n, r in enumerate(rows, 2):
        try:
            by_id[r["id"]] = float(r["sales"])
        except ValueError:
            raise LookalikeError(f"{path}:{n}: sales value {r['sales']!r} is not a number") from None
    return by_id


def cmd_sanity(args) -> None:
    from lookalike.sanity import sanity_check

    res = sanity_check(
        Path(args.out_file),
        n=args.n,
        epochs=args.epochs,
        cache_dir=args.cache_dir,
        image_size=args.image_size,
        progress=not args.no_progress,
    )
    print(res["summary"])
    if res["status"] != "PASS":
        sys.exit(1)


def cmd_embed(args) -> None:
    """Fill the embedding cache for a whole catalogue (no checkpoint needed): what train, evaluate and
    ingest then read instead of embedding; on Ray for catalogues one machine cannot embed in time."""
    from lookalike.catalogue import load_catalogue
    from lookalike.catalogue.loading import read_schema
    from lookalike.config import load_config
    from lookalike.distributed import RayOptions
    from lookalike.encoders.embedding import cache_root, embed_catalogue, embedding_counts, image_encoder
    from lookalike.provenance import provenance

    cfg = with_catalog(
        load_config(
            args.config,
            {
                "data.catalog": args.catalog,
                "encoder.cache_dir": args.cache_dir,
                "encoder.batch_size": args.batch_size,
                "encoder.device": args.device,
            },
        )
    )
    ray = RayOptions.from_args(args, cfg.encoder.batch_size)
    cat = load_catalogue(
        cfg.data.catalog, read_schema(Path(args.schema)) if args.schema else cfg.data.schema_, cfg.data.format
    )
    logger.info(cat.report.summary())
    emb = embed_catalogue(cat, cfg, progress=not args.no_progress, texts=False, ray=ray)
    t = emb.timings
    failed = len(cat) - len(emb.products)
    print(embedding_counts(t, args.engine))
    if args.report:
        enc = image_encoder(cfg)
        report = {
            "engine": args.engine,
            "ray": ray.__dict__ if ray else None,
            "catalog": cfg.data.catalog,
            "products": len(cat),
            "embedded": len(emb.products),
            "skipped": failed,
            **t,
            "encoder": {"name": enc.name, "fingerprint": enc.fingerprint(), **cfg.encoder.model_dump()},
            "cache": str(cache_root(cfg)),
            "provenance": provenance(),
        }
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        logger.info(f"wrote {args.report}")


def cmd_ensemble(args) -> None:
    """Average the unit query vectors of several checkpoints into one checkpoint used like any other."""
    for path in args.models:
        require_checkpoint(path)
    from lookalike.model import build_ensemble

    model, extra = build_ensemble(args.models)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, **extra)
    logger.info(f"ensemble of {len(args.models)} checkpoints ({len(model.config.tower.members)} towers) → {out}")
    print(out)


def cmd_models(args) -> None:
    from lookalike.encoders import list_models

    for s in list_models():
        print(f"{s.kind:<6} {s.name:<20} {s.source:<40} {s.description}")


def cmd_train_user_tower(args) -> None:
    from lookalike.training.user_tower import cmd_train_user_tower as train

    train(args)


def cmd_train_reranker(args) -> None:
    from lookalike.training.listwise import ListwiseConfig, train_for_checkpoint

    require_checkpoint(args.model)
    try:
        cfg = ListwiseConfig(steps=args.steps, diversity_weight=args.mu, seed=args.seed)
    except ValueError as e:
        raise LookalikeError(f"invalid reranker option: {e}".replace("\n", "; ")) from None
    info = train_for_checkpoint(args.model, args.out, cfg, args.depth, cache_dir=args.cache_dir)
    logger.info(
        f"reranker → {args.out}: selection-half nDCG@10 {info['kept']['ndcg']:.4f} ILD@10 {info['kept']['ild']:.4f} "
        f"(plain top-10 {info['plain']['ndcg']:.4f} / {info['plain']['ild']:.4f}), {info['train_s']} s"
    )
    print(args.out)


def cmd_train_adapter(args) -> None:
    from lookalike.training.adapter import AdapterConfig, train_for_checkpoint

    require_checkpoint(args.model)
    try:
        cfg = AdapterConfig(out_dim=args.dim, epochs=args.epochs, seed=args.seed)
    except ValueError as e:
        raise LookalikeError(f"invalid adapter option: {e}".replace("\n", "; ")) from None
    info = train_for_checkpoint(args.model, args.out, cfg, cache_dir=args.cache_dir)
    logger.info(
        f"{args.dim}-d adapter {info['fingerprint']} → {args.out}: validation nDCG@10 "
        f"{info['val_ndcg@10_adapter']:.4f} (512-d {info['val_ndcg@10_full']:.4f}), {info['train_s']} s"
    )
    print(args.out)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """train, evaluate, search, centrality, sanity-check, embed, ensemble, models; tag and audit (lookalike.tagging)."""

    t = sub.add_parser("train", help="main job: load, embed, train the towers, evaluate, write artifacts")
    add_run_options(t)
    add_training_options(t)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on any catalogue of the same schema")
    e.add_argument("--model", required=True, help="checkpoint (best_model.pt)")
    e.add_argument("--catalog", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--schema")
    e.add_argument("--cache-dir")
    add_device_option(e)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("search", help="attribute JSON, text, image or product id → top-K with scores")
    s.add_argument("--model", required=True)
    s.add_argument("--catalog", help=f"catalogue directory or file ({default_help(CATALOG)})")
    s.add_argument("--json", help="attribute JSON (a file or a JSON string)")
    s.add_argument("--text")
    s.add_argument("--image", help="image file")
    s.add_argument("--product", help="a catalogue product id (image → image)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.add_argument("--reranker", choices=["listwise"], help="reorder the top candidates by the list-wise reranker")
    s.add_argument("--reranker-model", metavar="FILE", help="the reranker's file (lookalike train-reranker)")
    s.add_argument("--reranker-depth", type=int, default=100, help="candidates the reranker orders (default 100)")
    s.add_argument("--cache-dir")
    add_device_option(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_search)

    c = sub.add_parser("centrality", help="best-seller proxy: image centrality, anchors, per-category stats")
    add_run_options(c)
    c.add_argument("--fraction", type=float, default=0.1)
    c.add_argument("--sales", help="CSV id,sales: report rank correlation with centrality")
    c.add_argument(
        "--group-by",
        choices=["category", "style"],
        default="category",
        help="per-group figures by the schema's category field, or by K-Fashion style (스타일 label, else folder)",
    )
    c.set_defaults(func=cmd_centrality)

    sc = sub.add_parser("sanity-check", help="train on synthetic data and check the mechanics")
    sc.add_argument("--out-file", default="temp_logs/sanity_check_results.json")
    sc.add_argument("--n", type=int, default=600, help="synthetic products")
    sc.add_argument("--epochs", type=int, default=8)
    sc.add_argument("--cache-dir")
    sc.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="the image encoder's input size (default: the encoder's own, 224 176)",
    )
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(func=cmd_sanity)

    em = sub.add_parser("embed", help="fill the embedding cache for a catalogue's images, locally or on Ray")
    em.add_argument(
        "--catalog",
        "--data",
        dest="catalog",
        help=f"catalogue directory or file ({default_help(CATALOG)})",
    )
    em.add_argument(
        "--config",
        help="JSON run config (a file or a shipped config's name): its encoder section says which frozen encoder "
        "and cache",
    )
    em.add_argument("--schema", help="JSON schema of a CSV/JSONL catalogue")
    em.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike or $LOOKALIKE_CACHE)")
    add_device_option(em)
    em.add_argument("--report", help="also write the counts, config and versions to this JSON file")
    em.add_argument("--no-progress", action="store_true")
    from lookalike.distributed import add_engine_options

    add_engine_options(em)
    em.set_defaults(func=cmd_embed)

    en = sub.add_parser("ensemble", help="one checkpoint averaging the query vectors of towers sharing an image space")
    en.add_argument("--models", nargs="+", required=True, metavar="CKPT", help="checkpoints (best_model.pt) to average")
    en.add_argument("--out", required=True, help="the ensemble checkpoint to write (e.g. runs/ensemble.pt)")
    en.set_defaults(func=cmd_ensemble)

    m = sub.add_parser("models", help="list the registered frozen encoders")
    m.set_defaults(func=cmd_models)

    u = sub.add_parser("train-user-tower", help="train the user tower (a history → a query) on logged sessions")
    u.add_argument("--events", required=True, help="events file (CSV or JSON Lines, as `events import` reads)")
    u.add_argument("--store", required=True, help="the catalogue's store URL (the products' vectors)")
    u.add_argument("--out", required=True, help="where the tower goes (U.pt)")
    u.add_argument("--epochs", type=int, default=5)
    u.add_argument("--seed", type=int, default=0)
    u.set_defaults(func=cmd_train_user_tower)

    r = sub.add_parser(
        "train-reranker", help="train the list-wise reranker (serve --reranker listwise) for a checkpoint's lists"
    )
    r.add_argument("--model", required=True, help="checkpoint (best_model.pt) whose lists it reorders")
    r.add_argument("--out", required=True, help="where the reranker goes (R.pt)")
    r.add_argument("--depth", type=int, default=100, help="candidates per list (default 100: the ANN top-100)")
    r.add_argument("--steps", type=int, default=200)
    r.add_argument("--mu", type=float, default=0.3, help="diversity weight μ in the reward nDCG@10 + μ·ILD@10")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--cache-dir")
    r.set_defaults(func=cmd_train_reranker)

    ad = sub.add_parser(
        "train-adapter", help="train the compact adapter (catalog ingest --adapter) on a checkpoint's training split"
    )
    ad.add_argument("--model", required=True, help="checkpoint (best_model.pt) whose space it compresses")
    ad.add_argument("--out", required=True, help="where the adapter goes (A.pt)")
    ad.add_argument("--dim", type=int, default=128, help="the compact dimension (default 128)")
    ad.add_argument("--epochs", type=int, default=36, help="at most (early-stopped on validation nDCG@10)")
    ad.add_argument("--seed", type=int, default=42)
    ad.add_argument("--cache-dir")
    ad.set_defaults(func=cmd_train_adapter)

    # tag and audit live with the tagger (registered here, with the core, rather than as an entry point of
    # their own, so an installed lookalike needs no reinstall to find them)
    from lookalike.tagging.commands import add_commands as add_tagging

    add_tagging(sub)
