"""The ablations behind the ranking's settings, on fashion-products (the split the main job uses):

    python benchmarks/ablations.py --markdown                                  # all three parts, tables to paste
    python benchmarks/ablations.py --parts soft --limit 12000 --epochs 10      # affordable variants
    python benchmarks/ablations.py --parts depth --gallery all --checkpoint CKPT   # (c) on every product

(a) soft: the soft-target sweep (`train.soft_targets` 0 … 0.5, `train.soft_sharpness` 2/4/8,
    `train.soft_category_weight` 0 / 0.5): validation nDCG@10 (all seven fields) and articleType
    precision@10 of each best checkpoint, JSON → image by plain cosine, as training selects on. The text
    tower is off, as it was for the figures config.py quoted (and it costs time on every run).
(b) hubness: one model (the default settings of (a)) on validation, JSON → image ranked with hubness
    weight 0, 0.25, 0.5, 0.75 at hubness_k 50: nDCG@10 (all seven fields), gender+articleType+baseColour
    hit@10 and articleType precision@10.
(c) depth: the service's re-scoring of a store's cosine top-D, on the test split's JSON queries against the
    test gallery (or `--gallery all`: every product, as a service holds them). For the old fixed depths
    (20, 50, 100, 200 = max(10k, 200) for k = 10) the share of queries whose re-scored top-10 equals the
    exact corrected top-10; for the certified rule (retrieval/ranking.py), run through `rank` on a real
    embedded store one query at a time, that share, the share certified (at the first depth), the depths
    it used and its time, with two bounds: the largest offset alone, and the service's (the 4,096 largest
    offsets scored exactly, the largest of the rest for every other item).

CKPT: a model trained on the same split, e.g. runs/ablations/checkpoints/default/best_model.pt that (a) wrote.
Every run shares one embedding cache (the default one, or --cache-dir): only a first run embeds the catalogue's
images and texts. On 2 shared cores (load average 13.5 at the start, 6.3 at the end) the full default run took
54 minutes: 871 s to prepare (mostly embedding the 39,653 product texts for the first time), 2,110 s for the six
trainings, 46 s for (b), 235 s for (c); `--parts depth --gallery all --checkpoint CKPT` took 201 s (load 4.3).
Its timings are in its last line. Everything printed is also written to --out/ablations.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# (label, train overrides); the first is the default configuration, reused by parts (b) and (c).
SOFT_SETTINGS = [  # (checkpoint folder, label, train overrides)
    ("default", "soft 0.3, sharpness 2, category 0.5 (default)", {}),
    ("soft0", "soft 0 (exact matches only)", {"soft_targets": 0.0}),
    ("category0", "soft 0.3, sharpness 2, category 0", {"soft_category_weight": 0.0}),
    ("sharp4", "soft 0.3, sharpness 4, category 0.5", {"soft_sharpness": 4.0}),
    ("sharp8", "soft 0.3, sharpness 8, category 0.5", {"soft_sharpness": 8.0}),
    ("soft0.5", "soft 0.5, sharpness 4, category 0.5", {"soft_targets": 0.5, "soft_sharpness": 4.0}),
]
HUBNESS_WEIGHTS = [0.0, 0.25, 0.5, 0.75]
FIXED_DEPTHS = [20, 50, 100, 200]

NDCG = "json_to_image/attribute/ndcg@10"
TRIPLE = "json_to_image/attribute:gender+articleType+baseColour/hit@10"
ARTICLE = "json_to_image/attribute:articleType/precision@10"


def machine() -> dict:
    """What the figures ran on: cores, the threads each library uses, and the load before the run."""
    import torch
    from threadpoolctl import threadpool_info

    return {
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": sorted({p["num_threads"] for p in threadpool_info()}),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def metric(results: dict, path: str) -> float:
    task, definition, name = path.split("/")
    return float(results[task][definition]["all"][name])


def config(args):
    from lookalike.config import load_config

    return load_config(
        "fashion-products",  # the shipped config (lookalike/configs)
        {
            "data.catalog": args.catalog,
            "data.limit": args.limit,
            "encoder.cache_dir": args.cache_dir,
            "train.epochs": args.epochs,
            "train.train_text": False,
            "out_dir": str(Path(args.out) / "runs"),
        },
    )


def validation(model, prep, cfg, weight: float, k: int = 50) -> dict:
    """JSON → image on the whole validation gallery, ranked with hubness weight `weight` (0: plain cosine)."""
    from lookalike.evaluation.evaluate import eval_definitions
    from lookalike.evaluation.evaluator import RetrievalEvaluator
    from lookalike.retrieval.hubness import hub_penalty

    idx = prep.idx["val"]
    products = [prep.emb.products[i] for i in idx]
    gallery = model.space.transform(prep.emb.features[idx])
    queries = model.encode_attributes([p.attributes for p in products])
    bias = None if weight == 0 else -weight * hub_penalty(gallery, model.query_bank_vectors(), k)
    ev = RetrievalEvaluator(products, eval_definitions(cfg, prep.emb.catalogue.schema, False), cfg.eval.ks, 100)
    return ev({"json_to_image": queries}, gallery, per_category=False, biases={"json_to_image": bias})


def train_setting(cfg, prep, name: str, overrides: dict, out: Path):
    """Train one setting on the shared split; its best checkpoint, loaded, and the seconds it took."""
    from lookalike.evaluation.evaluate import validator
    from lookalike.model import LookalikeModel
    from lookalike.pipeline import new_model
    from lookalike.training.trainer import train

    run_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=overrides)})
    ckpt = out / "checkpoints" / name
    t = time.perf_counter()
    model = new_model(run_cfg, prep)
    with contextlib.redirect_stdout(sys.stderr):  # the loop's per-epoch lines: stdout holds only the tables
        history = train(
            model, prep.data, validator(prep.emb, prep.idx["val"], run_cfg), run_cfg.train, ckpt, progress=False
        )
    best, payload = LookalikeModel.load(ckpt / "best_model.pt")
    return best, ckpt / "best_model.pt", {"best_epoch": payload["epoch"], "epochs_run": len(history)}, t


def part_soft(cfg, prep, out: Path, log: logging.Logger) -> tuple[list[dict], Path]:
    rows, default_ckpt = [], None
    for name, label, overrides in SOFT_SETTINGS:
        model, ckpt, info, t = train_setting(cfg, prep, name, overrides, out)
        res = validation(model, prep, cfg, 0.0)
        row = {
            "setting": label,
            **info,
            "val_ndcg@10": round(metric(res, NDCG), 4),
            "val_articleType_p@10": round(metric(res, ARTICLE), 4),
            "train_s": round(time.perf_counter() - t, 1),
        }
        log.info(json.dumps(row))
        rows.append(row)
        default_ckpt = default_ckpt or ckpt
    return rows, default_ckpt


def part_hubness(model, prep, cfg, log: logging.Logger) -> list[dict]:
    rows = []
    for w in HUBNESS_WEIGHTS:
        res = validation(model, prep, cfg, w, cfg.retrieval.hubness_k)
        rows.append(
            {
                "weight": w,
                "val_ndcg@10": round(metric(res, NDCG), 4),
                "val_gender+articleType+baseColour_hit@10": round(metric(res, TRIPLE), 4),
                "val_articleType_p@10": round(metric(res, ARTICLE), 4),
            }
        )
        log.info(json.dumps(rows[-1]))
    return rows


def part_depth(ckpt: Path, prep, gallery_kind: str, k: int, log: logging.Logger) -> dict:
    """Fixed re-scoring depths against the exact corrected top-k, and the certified rule through `rank`."""
    from lookalike.inference import QueryEncoder
    from lookalike.retrieval.ranking import FIRST_DEPTH, TOP_EXACT, Gallery, OffsetBound, StoreGallery, rank
    from lookalike.retrieval.stores import StoreItem, open_store
    from lookalike.retrieval.topk import topk

    enc = QueryEncoder.load(ckpt)
    emb = prep.emb
    rows = np.arange(len(emb.products)) if gallery_kind == "all" else prep.idx["test"]
    ids = [emb.products[i].id for i in rows]
    order = np.argsort(np.array(ids, dtype=object), kind="stable")  # id order: ties by id, as a store
    rows, ids = rows[order], [ids[j] for j in order]
    vectors = enc.features(emb.features[rows])
    offsets = enc.hub_bias(vectors)
    queries = np.stack([enc.attributes(emb.products[i].attributes)[0] for i in prep.idx["test"]])
    exact = rank(queries, Gallery(vectors, ids, offsets), k, corrected=True)
    want = np.stack([r.rows for r in exact])

    fixed = []
    for depth in FIXED_DEPTHS:
        same = 0
        for s in range(0, len(queries), 512):
            cos = queries[s : s + 512] @ vectors.T
            cand = np.sort(topk(cos, depth)[0], axis=1)  # the cosine top-D, in id order
            rescored = np.take_along_axis(cos, cand, axis=1) + offsets[cand]
            got = np.take_along_axis(cand, topk(rescored, k)[0], axis=1)
            same += int((got == want[s : s + 512]).all(axis=1).sum())
        fixed.append({"depth": depth, "share_exact": round(same / len(queries), 4)})
        log.info(json.dumps(fixed[-1]))

    served = QueryEncoder.load(ckpt)  # as a service starts: no offset computed yet
    certified = []
    with tempfile.TemporaryDirectory() as tmp, open_store(f"embedded://{tmp}/store", dim=vectors.shape[1]) as store:
        store.load([[StoreItem(i, v) for i, v in zip(ids, vectors)]], total=len(ids))
        for held in (0, TOP_EXACT):  # the largest offset alone as the bound, then the service's rule
            bound = OffsetBound(store, served.hub_bias, start=False, top=held)
            t = time.perf_counter()
            b = bound.wait()
            bound_s = time.perf_counter() - t
            t = time.perf_counter()
            lists = [rank(v, StoreGallery(store, served.hub_bias, bound), k, corrected=True)[0] for v in queries]
            rank_s = time.perf_counter() - t
            depths = np.array([r.depth for r in lists])
            same = np.mean([r.ids == [ids[j] for j in w] for r, w in zip(lists, want)])
            certified.append(
                {
                    "held": held,
                    "share_exact": round(
                        float(np.mean([r.ids == [ids[j] for j in w] for r, w in zip(lists, want)])), 4
                    ),
                    "share_certified": round(float(np.mean([r.certified for r in lists])), 4),
                    "share_first_depth": round(float(np.mean(depths <= FIRST_DEPTH)), 4),
                    "depth_p50": int(np.percentile(depths, 50)),
                    "depth_p95": int(np.percentile(depths, 95)),
                    "depth_max": int(depths.max()),
                    "largest_offset": round(b.max, 4),
                    "rest": round(b.rest, 4),
                    "bound_s": round(bound_s, 1),  # the first: every item's offset computed, as a service starts
                    "ms_per_query": round(1000 * rank_s / len(queries), 2),
                }
            )
            log.info(json.dumps(certified[-1]))
    return {
        "gallery": gallery_kind,
        "gallery_size": len(ids),
        "queries": len(queries),
        "k": k,
        "offset_range": [round(float(offsets.min()), 4), round(float(offsets.max()), 4)],
        "fixed": fixed,
        "certified": certified,
    }


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"`python benchmarks/ablations.py {' '.join(r['argv'])}` on {m['cores_usable']} cores "
        f"(torch {m['torch_threads']} threads, BLAS {m['blas_threads']}), load average {m['load_average']} at the "
        f"start, {r['load_average_end']} at the end; fashion-products, {r['split_sizes']} "
        f"(train / val / test), {r['epochs']} epochs at most.",
        "",
    ]
    if "soft" in r:
        lines += [
            "| soft targets (validation, JSON → image, plain cosine) | best epoch | nDCG@10 | articleType P@10 |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['setting']} | {x['best_epoch']} | {x['val_ndcg@10']:.4f} | {x['val_articleType_p@10']:.4f} |"
            for x in r["soft"]
        ]
        lines.append("")
    if "hubness" in r:
        lines += [
            "| hubness weight (k 50; validation, JSON → image) | nDCG@10 | gender+articleType+baseColour hit@10 "
            "| articleType P@10 |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['weight']} | {x['val_ndcg@10']:.4f} | {x['val_gender+articleType+baseColour_hit@10']:.4f} "
            f"| {x['val_articleType_p@10']:.4f} |"
            for x in r["hubness"]
        ]
        lines.append("")
    if "depth" in r:
        d = r["depth"]
        lines += [
            f"| re-scoring depth ({d['queries']:,} test JSON queries, {d['gallery_size']:,}-product gallery, "
            f"top-{d['k']}) | top-{d['k']} = exact corrected top-{d['k']} | certified (at the first depth) "
            "| depth used (p50 / p95 / max) | ms a query |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| fixed {x['depth']} | {x['share_exact']:.4f} | | {x['depth']} | |" for x in d["fixed"]]
        for c in d["certified"]:
            rule = (
                "certified, bound: the largest offset"
                if c["held"] == 0
                else f"certified, bound: the {c['held']:,} largest offsets scored exactly (the service's rule)"
            )
            lines.append(
                f"| {rule} | {c['share_exact']:.4f} | {c['share_certified']:.4f} ({c['share_first_depth']:.4f}) "
                f"| {c['depth_p50']} / {c['depth_p95']} / {c['depth_max']} | {c['ms_per_query']} |"
            )
        c = d["certified"][0]
        lines += [
            "",
            f"Offsets ranged {d['offset_range'][0]} … {d['offset_range'][1]}; computing every item's offset (as a "
            f"service starts) took {c['bound_s']} s; ms a query: certified ranking on the embedded store, one "
            "query at a time as the API asks, first depth 200, ×4 a round.",
        ]
    lines.append(f"\nTimings (s): {json.dumps(r['timings'])}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=["soft", "hubness", "depth"], default=["soft", "hubness", "depth"])
    p.add_argument("--catalog", default=str(ROOT.parent / "shared" / "data" / "fashion-products"))
    p.add_argument("--limit", type=int, default=None, help="a stratified subset of N products (default: all)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: lookalike's)")
    p.add_argument("--gallery", choices=["test", "all"], default="test", help="part (c)'s gallery")
    p.add_argument("--k", type=int, default=10, help="part (c)'s list length")
    p.add_argument("--out", default=str(ROOT / "runs" / "ablations"))
    p.add_argument("--checkpoint", help="parts (b) and (c) without (a): this model (trained on the same split)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    log = logging.getLogger("ablations")

    import warnings

    from lookalike.model import LookalikeModel
    from lookalike.pipeline import prepare

    warnings.filterwarnings("ignore", category=UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r: dict = {"argv": sys.argv[1:], "machine": machine(), "epochs": args.epochs, "timings": {}}
    cfg = config(args)
    t = time.perf_counter()
    prep = prepare(cfg, progress=False)
    r["timings"]["prepare_s"] = round(time.perf_counter() - t, 1)
    r["split_sizes"] = " / ".join(f"{len(prep.idx[s]):,}" for s in ("train", "val", "test"))
    t = time.perf_counter()
    if "soft" in args.parts:
        r["soft"], ckpt = part_soft(cfg, prep, out, log)
    elif args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        name, _, overrides = SOFT_SETTINGS[0]
        _, ckpt, _, _ = train_setting(cfg, prep, name, overrides, out)
    r["timings"]["training_s"] = round(time.perf_counter() - t, 1)
    model, _ = LookalikeModel.load(ckpt)
    if "hubness" in args.parts:
        t = time.perf_counter()
        r["hubness"] = part_hubness(model, prep, cfg, log)
        r["timings"]["hubness_s"] = round(time.perf_counter() - t, 1)
    if "depth" in args.parts:
        t = time.perf_counter()
        r["depth"] = part_depth(ckpt, prep, args.gallery, args.k, log)
        r["timings"]["depth_s"] = round(time.perf_counter() - t, 1)
    r["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "ablations.json").write_text(json.dumps(r, indent=2))
    print(markdown(r) if args.markdown else json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
