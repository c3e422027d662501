"""The augmentation ablation (issue 21): each training-time augmentation on its own against none, on
fashion-products, on validation and test, with 95% bootstrap confidence intervals:

    python benchmarks/augmentations.py [--limit 8000] [--epochs 8] [--views 2] [--markdown]

Variants: none (field dropout only, the default), synonyms (the shipped fashion-products table, p 0.2),
attribute mixing within articleType (p 0.2), image views (V cached views per training image), MixUp on the
cached vectors (α 0.4), and all of them. Every variant trains on the same split from the same seed (the text
tower off: JSON → image is what the augmentations act on), and is scored by the ranking users get (hubness
correction on): nDCG@10 over all seven fields and gender+articleType+baseColour hit@10, each with its 95%
bootstrap CI over queries, and the paired difference from `none` with its CI: an augmentation helps only
where that interval lies above zero. The last column ranks test queries whose values have synonyms, with one
synonym swapped in (what a user typing "Sneakers" gets); a model trained without the table sees UNK there.
Everything printed is also written to --out/augmentations.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent))

NDCG, TRIPLE = ("attribute", "ndcg@10"), ("attribute:gender+articleType+baseColour", "hit@10")


def variants(views: int) -> list[tuple[str, dict]]:
    syn = {"synonyms": "fashion-products", "synonym_p": 0.2}
    return [
        ("none", {}),
        ("synonyms", syn),
        ("mixing", {"mix_p": 0.2}),
        (f"views×{views}", {"image_views": views}),
        ("mixup", {"mixup_alpha": 0.4}),
        ("all", {**syn, "mix_p": 0.2, "image_views": views, "mixup_alpha": 0.4}),
    ]


def per_query(model, emb, idx, cfg, queries=None) -> dict[tuple[str, str], np.ndarray]:
    """Per-query metrics of JSON → image on products `idx` (each a query, all of them the gallery), ranked as
    users get them (hubness correction on)."""
    from lookalike.evaluation.evaluate import eval_definitions, ranked_gallery
    from lookalike.evaluation.evaluator import RetrievalEvaluator
    from lookalike.evaluation.metrics import per_query_metrics

    products = [emb.products[i] for i in idx]
    gallery, bias = ranked_gallery(model, emb, idx)
    ev = RetrievalEvaluator(products, eval_definitions(cfg, emb.catalogue.schema, instance=False), [10], 100)
    q = model.encode_attributes(queries or [p.attributes for p in products])
    top, _ = ev.rank("json_to_image", q, gallery, bias)
    out = {}
    for name, metric in (NDCG, TRIPLE):
        keys = ev.keys[name]
        rel = keys[top] == keys[:, None]
        counts = np.bincount(keys, minlength=keys.max() + 1)[keys]
        out[(name, metric)] = per_query_metrics(rel, counts, [10])[metric]
    return out


def ci(values: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def synonym_queries(products, table) -> tuple[list[int], list[dict]]:
    """Rows whose attributes have a value with a synonym, and those attributes with the first synonym in."""
    rows, queries = [], []
    for j, p in enumerate(products):
        q, swapped = dict(p.attributes), False
        for field, entries in table.items():
            v = q.get(field)
            if isinstance(v, str) and v in entries:
                q[field], swapped = entries[v][0], True
        if swapped:
            rows.append(j)
            queries.append(q)
    return rows, queries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default=str(ROOT.parent / "shared/data/fashion-products"))
    p.add_argument("--limit", type=int, default=8000, help="products (stratified subset; 0: all)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    p.add_argument("--out", default="runs/augmentations")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()

    from machine import Machine

    machine = Machine.start("augmentations.py", args.markdown)
    import logging

    from lookalike.config import load_config
    from lookalike.evaluation.evaluate import validator
    from lookalike.model import LookalikeModel
    from lookalike.pipeline import new_model, prepare
    from lookalike.training.augment import read_synonyms
    from lookalike.training.trainer import train

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    report: dict = {"args": vars(args), "variants": {}}
    base_pq: dict[str, dict] = {}
    lines = []
    for name, augment in variants(args.views):
        if args.only and name not in args.only and name != "none":
            continue
        t0 = time.perf_counter()
        cfg = load_config(
            "fashion-products",
            {
                "data.catalog": args.catalog,
                "data.limit": args.limit or None,
                "out_dir": str(out / name),
                "train.epochs": args.epochs,
                "train.train_text": False,
            },
        )
        cfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update=augment)})
        prep = prepare(cfg, progress=False)
        ckpt = out / name / "checkpoints"
        train(
            new_model(cfg, prep), prep.data, validator(prep.emb, prep.idx["val"], cfg), cfg.train, ckpt, progress=False
        )
        model, payload = LookalikeModel.load(ckpt / "best_model.pt")
        row = {"seconds": round(time.perf_counter() - t0, 1), "best_epoch": payload["epoch"]}
        pq = {split: per_query(model, prep.emb, prep.idx[split], cfg) for split in ("val", "test")}
        table = read_synonyms("fashion-products", prep.emb.catalogue.schema.fields)
        test_products = [prep.emb.products[i] for i in prep.idx["test"]]
        rows, queries = synonym_queries(test_products, table)
        swapped_queries = [p.attributes for p in test_products]
        for j, q in zip(rows, queries):
            swapped_queries[j] = q
        # the whole test gallery and bias as before; only the rows with a synonym swapped in are kept
        swapped = per_query(model, prep.emb, prep.idx["test"], cfg, swapped_queries)
        pq["test_synonyms"] = {k: v[rows] for k, v in swapped.items()}
        if name == "none":
            base_pq = pq
        for split, metrics in pq.items():
            for (definition, metric), values in metrics.items():
                key = f"{split}/{definition}/{metric}"
                mean, lo, hi = ci(values, rng)
                diff = values - base_pq[split][(definition, metric)]
                d, dlo, dhi = ci(diff, rng)
                row[key] = {"mean": mean, "ci": [lo, hi], "vs_none": d, "vs_none_ci": [dlo, dhi], "n": len(values)}
        report["variants"][name] = row
        print(f"{name}: done in {row['seconds']} s (best epoch {row['best_epoch']})", file=sys.stderr, flush=True)
        lines.append((name, row))
    cols = [
        ("val", NDCG),
        ("test", NDCG),
        ("val", TRIPLE),
        ("test", TRIPLE),
        ("test_synonyms", NDCG),
    ]
    head = "| augmentation | " + " | ".join(f"{s} {d.split(':')[-1]} {m}" for s, (d, m) in cols) + " |"
    text = [head, "|" + "---|" * (len(cols) + 1)]
    for name, row in lines:
        cells = []
        for s, (d, m) in cols:
            r = row[f"{s}/{d}/{m}"]
            cell = f"{r['mean']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]"
            if name != "none":
                cell += f"; Δ {r['vs_none']:+.4f} [{r['vs_none_ci'][0]:+.4f}, {r['vs_none_ci'][1]:+.4f}]"
            cells.append(cell)
        text.append(f"| {name} | " + " | ".join(cells) + " |")
    n = lines[0][1]
    text.append("")
    text.append(
        f"{args.limit or 'all'} products, {args.epochs} epochs, queries: val {n['val/attribute/ndcg@10']['n']}, "
        f"test {n['test/attribute/ndcg@10']['n']}, test with a synonym {n['test_synonyms/attribute/ndcg@10']['n']}; "
        "95% bootstrap CIs over queries; Δ: paired difference from none."
    )
    machine.table("\n".join(text))
    report["machine"] = machine.finish()
    (out / "augmentations.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
