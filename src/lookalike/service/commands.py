"""`lookalike serve` and `lookalike catalog ingest|add|update|delete|list` (the same operations as the API)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from lookalike.errors import LookalikeError

DEFAULT_STORE = "embedded://runs/service/store"


def _store_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained checkpoint (best_model.pt)")
    p.add_argument("--store", default=DEFAULT_STORE,
                   help=f"vector store URL: embedded:///dir[?index=hnsw], postgresql://..., pgserver:///dir "
                        f"(default {DEFAULT_STORE})")
    p.add_argument("--new-rule", default="year>=2016", help="which products are new: FIELD>=NUMBER or FIELD=V1,V2")
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike or $LOOKALIKE_CACHE)")


def _url(store: str) -> str:
    """Relative embedded paths are made absolute so the server and the CLI mean the same directory."""
    if store.startswith("embedded://") and not store.startswith("embedded:///"):
        rest = store[len("embedded://"):]
        path, _, query = rest.partition("?")
        return f"embedded://{Path(path).resolve()}" + (f"?{query}" if query else "")
    return store


def _open(args):
    from lookalike.recommend.catalogue import QueryEncoder
    from lookalike.recommend.newness import NewRule
    from lookalike.retrieval.stores import open_store

    rule = NewRule.parse(args.new_rule)
    enc = QueryEncoder.load(args.model, args.cache_dir)
    return enc, open_store(_url(args.store), enc.dim), rule


def cmd_serve(args) -> None:
    import uvicorn

    from lookalike.service.app import ServiceSettings, create_app

    try:
        settings = ServiceSettings(checkpoint=args.model, store=_url(args.store), catalog=args.catalog,
                                   upload_dir=args.upload_dir, new_rule=args.new_rule, max_upload_mb=args.max_upload_mb,
                                   max_k=args.max_k, cache_dir=args.cache_dir)
    except ValueError as e:
        raise LookalikeError(f"invalid service settings: {e}") from None
    app = create_app(settings)
    n = len(app.state.service.store)
    print(f"serving {n} products from {settings.store} on http://{args.host}:{args.port} (dashboard at /, API at /docs)")
    if n == 0:
        print("the store is empty: fill it with `lookalike catalog ingest`")
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


def cmd_ingest(args) -> None:
    from lookalike.catalogue import load_catalogue
    from lookalike.catalogue.loading import read_schema
    from lookalike.recommend.catalogue import ingest_catalogue

    enc, store, rule = _open(args)
    cat = load_catalogue(args.catalog, read_schema(Path(args.schema)) if args.schema else None,
                         fallback_schema=enc.schema)
    print(cat.report.summary())
    rep = ingest_catalogue(store, cat, enc, rule, progress=not args.no_progress)
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
    from lookalike.recommend.catalogue import check_id, decode_image, product_from_json, product_metadata
    from lookalike.retrieval.stores import StoreItem

    enc, store, rule = _open(args)
    pid = check_id(args.id)
    existing = store.get(pid)
    if update and existing is None:
        raise LookalikeError(f"unknown product id {pid!r}")
    if not update and existing is not None:
        raise LookalikeError(f"product {pid!r} exists; use `lookalike catalog update`")
    attributes = _attributes(args.attributes)
    if args.image:
        src = Path(args.image)
        try:
            data = src.read_bytes()
        except OSError as e:
            raise LookalikeError(f"cannot read image {src}: {e}") from None
        vector = enc.images([decode_image(data, f"image {src}")])[0]
        upload_dir = Path(os.path.abspath(args.upload_dir))
        upload_dir.mkdir(parents=True, exist_ok=True)
        image = upload_dir / f"{pid}{src.suffix.lower() or '.img'}"
    elif existing is not None:
        vector, image = existing.vector, Path(existing.metadata["image"])
    else:
        raise LookalikeError("--image is required to add a product")
    md = product_metadata(product_from_json(pid, attributes, image, args.text, enc.schema), rule)
    if args.image:  # the copy is written before the store commit and removed if the commit fails
        tmp = image.with_name(f".{image.name}.tmp")
        shutil.copyfile(args.image, tmp)
        try:
            store.upsert([StoreItem(pid, vector, md)])
            tmp.replace(image)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        store.upsert([StoreItem(pid, vector, md)])
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
    for it in store.get_many(ids[args.offset:args.offset + args.limit]):
        md = {k: v for k, v in it.metadata.items() if k != "image"}
        print(f"{it.id:<14} {json.dumps(md, ensure_ascii=False)}")
    print(f"({len(ids)} products)")


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="HTTP API + dashboard: recommendations, search, catalogue, KPIs")
    _store_opts(s)
    s.add_argument("--catalog", help="catalogue directory whose images are served (default: the model's)")
    s.add_argument("--upload-dir", default="runs/service/uploads", help="where images of added products are kept")
    s.add_argument("--max-upload-mb", type=float, default=5.0, help="largest accepted upload (default 5)")
    s.add_argument("--max-k", type=int, default=100, help="largest K a request may ask for (default 100)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("catalog", help="manage the served catalogue: ingest, add, update, delete, list")
    csub = c.add_subparsers(dest="catalog_command", required=True)
    i = csub.add_parser("ingest", help="embed a whole catalogue and upsert it (one transaction)")
    _store_opts(i)
    i.add_argument("--catalog", required=True, help="catalogue directory or file")
    i.add_argument("--schema", help="JSON schema of a CSV/JSONL catalogue")
    i.add_argument("--no-progress", action="store_true")
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
