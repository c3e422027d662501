"""`lookalike tag` (photos → attributes) and `lookalike audit` (a catalogue's suspicious labels)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from lookalike.cli.options import require_checkpoint
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)


def cmd_tag(args) -> None:
    require_checkpoint(args.model)
    from PIL import Image

    from lookalike.inference import QueryEncoder, decode_image
    from lookalike.tagging.images import ImageTagger

    enc = QueryEncoder.load(args.model, args.cache_dir)
    tagger = ImageTagger.of(enc)
    if args.catalog:
        from lookalike.model import load_for_checkpoint

        emb, _ = load_for_checkpoint(enc.model, enc.payload, args.catalog, None, args.cache_dir, not args.no_progress)
        tagger.tagger.set_gallery(
            enc.features(emb.features), [p.attributes for p in emb.products], [p.id for p in emb.products]
        )
        logger.info(f"voting over {len(emb.products)} labelled products of {args.catalog}")
    images: list[Image.Image] = []
    names: list[str] = []
    skipped: dict[str, list[str]] = {}
    for name in args.image:
        try:
            data = Path(name).read_bytes()
            images.append(decode_image(data, f"image {name}"))
            names.append(name)
        except FileNotFoundError:
            skipped.setdefault("missing image", []).append(name)
        except (OSError, LookalikeError):
            skipped.setdefault("unreadable image", []).append(name)
    if skipped:
        logger.warning(
            "skipped %d of %d images: %s",
            sum(map(len, skipped.values())),
            len(args.image),
            "; ".join(f"{r} × {len(v)} ({', '.join(v[:3])})" for r, v in skipped.items()),
        )
    if not images:
        raise LookalikeError(f"none of the {len(args.image)} images could be read")
    out: list[dict[str, Any]] = []
    for s in range(0, len(images), 64):
        tags = tagger.tag(images[s : s + 64])
        out += [{"image": n, "attributes": t} for n, t in zip(names[s : s + 64], tags)]
    if args.format == "json":
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return
    for item in out:
        print(item["image"])
        for f, t in item["attributes"].items():
            value = t["value"] if isinstance(t["value"], str) else ", ".join(t["value"]) or "(none)"
            alt = ", ".join(f"{v} {p:.2f}" for v, p in t["alternatives"])
            print(f"  {f:<18} {value:<24} {t['confidence']:.3f}   {alt}")


def cmd_audit(args) -> None:
    if args.apply:
        from lookalike.catalogue.loading import load_catalogue
        from lookalike.tagging.audit import apply_review

        catalog = Path(args.catalog)
        schema_id = load_catalogue(catalog).schema.id_field if not args.id_field else args.id_field
        dest, n = apply_review(Path(args.apply), catalog, schema_id, Path(args.corrected) if args.corrected else None)
        print(f"{n} corrections written to {dest} (the source is unchanged)")
        return
    if not args.model:
        raise LookalikeError("audit needs --model (or --apply REVIEWED.csv to write corrections)")
    require_checkpoint(args.model)
    import time

    from lookalike.encoders.embedding import cache_root
    from lookalike.inference import QueryEncoder
    from lookalike.model import load_for_checkpoint
    from lookalike.tagging.audit import find_issues, out_of_fold, write_audit
    from lookalike.tagging.build import labelled
    from lookalike.tagging.images import ImageTagger

    t0 = time.perf_counter()
    enc = QueryEncoder.load(args.model, args.cache_dir)
    tagger = ImageTagger.of(enc).tagger
    emb, cfg = load_for_checkpoint(enc.model, enc.payload, args.catalog, None, args.cache_dir, not args.no_progress)
    data = labelled(emb, enc.features(emb.features), cache_root(cfg))
    t1 = time.perf_counter()
    probs = out_of_fold(tagger, data, args.folds)
    t2 = time.perf_counter()
    issues = find_issues(tagger, data, probs, [str(p.image.path) for p in emb.products], args.min_confidence)
    table, sheet = write_audit(issues, Path(args.out))
    t3 = time.perf_counter()
    by_field: dict[str, int] = {}
    for s in issues:
        by_field[s.field] = by_field.get(s.field, 0) + 1
    print(
        f"{len(issues)} suspected mislabels among {len(data)} products "
        f"({', '.join(f'{k} {v}' for k, v in by_field.items()) or 'none'}): {table}, {sheet}"
    )
    logger.info(
        f"audit timings: load + embeddings (cached) + colours {t1 - t0:.1f} s, out-of-fold ({args.folds} folds) "
        f"{t2 - t1:.1f} s, confident learning + files {t3 - t2:.1f} s, total {t3 - t0:.1f} s"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """tag, audit."""
    t = sub.add_parser("tag", help="photos → every attribute with a calibrated confidence and alternatives")
    t.add_argument("--model", required=True, help="checkpoint (best_model.pt) trained with its tagger")
    t.add_argument("--image", nargs="+", required=True, help="image files")
    t.add_argument("--catalog", help="a labelled catalogue to vote over (default: the model's training products)")
    t.add_argument("--format", choices=["table", "json"], default="table")
    t.add_argument("--cache-dir")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_tag)

    a = sub.add_parser("audit", help="suspected mislabels: out-of-fold predictions + confident learning (cleanlab)")
    a.add_argument("--model", help="checkpoint trained with its tagger (not needed with --apply)")
    a.add_argument("--catalog", required=True, help="the catalogue to audit (with --apply: whose table to correct)")
    a.add_argument("--out", default="runs/audit", help="where audit.csv and audit.html go (default runs/audit)")
    a.add_argument("--folds", type=int, default=5)
    a.add_argument(
        "--min-confidence",
        type=float,
        default=0.9,
        help="list a suspected label only when the predicted value has at least this calibrated confidence",
    )
    a.add_argument("--apply", help="a reviewed audit.csv: write its `corrected` values to a copy of the table")
    a.add_argument("--corrected", help="with --apply: where the corrected table goes (default beside the source)")
    a.add_argument("--id-field", help="with --apply: the table's id column (default: the catalogue schema's)")
    a.add_argument("--cache-dir")
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_audit)
