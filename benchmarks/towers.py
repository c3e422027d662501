"""Issue-6 benchmark: MLP vs coarse-to-fine tower (each with/without the 128-d adapter), regular and
zero-shot cold-start splits, per category, with paired significance tests; then the list-wise
diversity reranker vs MMR on the same top-100 candidate lists.

    python benchmarks/towers.py --cache-dir /tmp/lookalike-bench-cache-XXXX            # everything
    python benchmarks/towers.py --stage towers --epochs 12 --limit 20000
    python benchmarks/towers.py --stage rerank                 # reuses the regular-split MLP checkpoint
    python benchmarks/towers.py --stage report                 # print the tables of saved results

Text is left out (the towers compared are attribute towers), so no sentence embedding is needed.
Everything is written under --out (results.json, per_query.npz, rerank.json, checkpoints, adapters).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from machine import Machine

ROOT = Path(__file__).resolve().parents[1]


def base_config(args):
    from lookalike.catalogue.presets import FASHION_PRODUCTS
    from lookalike.config import load_config

    schema = FASHION_PRODUCTS.model_copy(update={"text_field": None})
    return load_config(
        "fashion-products",
        {
            "data.catalog": args.catalog,
            "data.limit": args.limit,
            "encoder.cache_dir": args.cache_dir,
            "train.epochs": args.epochs,
            "train.train_text": False,
            "data.schema": schema.model_dump(),
        },
    )


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start `cmd` with its stdout and stderr in `log` (the child keeps its own handle; ours is closed)."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)


def fmt(x: float) -> str:
    return f"{x:.4f}"


def p_str(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def report_towers(r: dict) -> None:
    print("\n== Towers: attribute-relevance nDCG@10 on the test gallery (all 7 fields must match) ==")
    a = r.get("adapter_config", {})
    recipe = (
        f"{a.get('loss')} over {a.get('pairs')} pairs + distillation ×{a.get('distill_weight')}"
        if "pairs" in a
        else f"{a.get('loss')} ({a.get('mining')}) over queries and images together, no distillation"
    )
    print(f"(+adapter128 here: {recipe}, {a.get('epochs')} epochs; 'kept' = adapter / 512-d)")
    print(
        f"{'split':<11} {'tower':<15} {'nDCG@10':>8} {'+adapter128':>11} {'kept':>6} {'PCA128':>7} "
        f"{'params':>9} {'train s':>8} {'s/epoch':>8} {'best ep':>7} {'adapter s':>9}"
    )
    for split, block in r["splits"].items():
        for tower, t in block["towers"].items():
            a = t["adapter"]
            print(
                f"{split:<11} {tower:<15} {fmt(t['test_ndcg@10']):>8} {fmt(a['test_ndcg@10']):>11} "
                f"{a['kept_of_full']:>7.2%} {fmt(a['pca_test_ndcg@10']):>7} {t['tower_params']:>9,} "
                f"{t['train_s']:>8.0f} {t['s_per_epoch']:>8.1f} {t['best_epoch']:>7} {a['train_s']:>9.0f}"
            )
        print(
            f"{'':<11} sizes {block['sizes']}"
            + (
                f"  held out {block['held_out']['field']}: {len(block['held_out']['values'])} values"
                if "held_out" in block
                else ""
            )
        )
    print("\n== Paired significance (same queries; b − a; t-test and Wilcoxon signed-rank) ==")
    for split, block in r["splits"].items():
        for name, s in block.get("significance", {}).items():
            print(
                f"{split:<11} {name:<40} Δ={s['mean_diff']:+.4f}  b better on {s['b_better']}, a on {s['a_better']} "
                f"of {s['n']}  p_t={p_str(s['t_test_p'])}  p_w={p_str(s['wilcoxon_p'])}"
            )
        for tower, t in block["towers"].items():
            s = t["adapter"]["vs_full"]
            print(
                f"{split:<11} {tower + ' 128-d adapter vs 512-d':<40} Δ={s['mean_diff']:+.4f}  "
                f"p_t={p_str(s['t_test_p'])}  p_w={p_str(s['wilcoxon_p'])}"
            )
    print("\n== Adapter: search cost on the test gallery (exact top-100, all test queries, best of 3) ==")
    for split, block in r["splits"].items():
        for tower, t in block["towers"].items():
            f, a = t["adapter"]["search_full"], t["adapter"]["search_adapted"]
            print(
                f"{split:<11} {tower:<15} 512-d {f['search_s'] * 1000:7.1f} ms {f['gallery_mb']:6.2f} MiB   "
                f"128-d {a['search_s'] * 1000:7.1f} ms {a['gallery_mb']:6.2f} MiB   speed-up "
                f"×{f['search_s'] / a['search_s']:.2f}, "
                f"memory ×{f['gallery_mb'] / a['gallery_mb']:.1f} smaller"
            )
    print("\n== Per category (categories with ≥ 30 test products; +ad = adapter of the tower stage) ==")
    for split, block in r["splits"].items():
        towers = list(block["towers"])
        cats = block["towers"][towers[0]].get("per_category", {})
        print(f"-- {split}")
        print(f"{'category':<26} {'n':>5} " + " ".join(f"{t[:14]:>15} {'+ad':>7}" for t in towers))
        for c, v in sorted(cats.items(), key=lambda kv: -kv[1]["n"]):
            if v["n"] < 30:
                continue
            print(
                f"{c[:26]:<26} {v['n']:>5} "
                + " ".join(
                    f"{block['towers'][t]['per_category'][c]['ndcg@10']:>15.4f} "
                    f"{block['towers'][t]['per_category'][c]['adapter_ndcg@10']:>7.4f}"
                    for t in towers
                )
            )


def report_adapters(out: Path) -> None:
    """The adapters of the `adapters` stage (cross-modal triplets + ranking distillation, hierarchical batches)."""
    import numpy as np

    from lookalike.studies.towers import paired_test

    found = {
        (s, t): json.loads((out / f"adapters-{s}-{t}.json").read_text())
        for s in ("regular", "cold-start")
        for t in ("mlp", "coarse-to-fine")
        if (out / f"adapters-{s}-{t}.json").exists()
    }
    if not found:
        return
    print(
        "\n== Stage-2 adapter 512 → 128 (cross-modal multi-similarity + ranking distillation, hierarchical batches) =="
    )
    print(
        f"{'split':<11} {'tower':<15} {'512-d':>7} {'PCA128':>7} {'adapter':>8} {'kept':>6} {'p (vs 512)':>10} "
        f"{'train s':>7} {'search 512':>10} {'search 128':>10} {'MiB 512→128':>12}"
    )
    for (split, tower), r in found.items():
        v = r["variants"]["hierarchical"]
        f, a = v["search_full"], v["search_adapted"]
        print(
            f"{split:<11} {tower:<15} {r['full_512_ndcg@10']:>7.4f} {r['pca_ndcg@10']:>7.4f} {v['test_ndcg@10']:>8.4f} "
            f"{v['kept_of_full']:>7.2%} {p_str(v['vs_full']['t_test_p']):>10} {v['train_s']:>7.0f} "
            f"{f['search_s'] * 1000:>8.0f}ms {a['search_s'] * 1000:>8.0f}ms "
            f"{f['gallery_mb']:>5.2f}→{a['gallery_mb']:.2f}"
        )
    for split in ("regular", "cold-start"):
        pq = {t: out / f"{split}-{t}/{split}/{t}/adapter-hierarchical-per_query.npy" for t in ("mlp", "coarse-to-fine")}
        if all(x.exists() for x in pq.values()):
            s = paired_test(np.load(pq["mlp"]), np.load(pq["coarse-to-fine"]))
            print(
                f"{split:<11} coarse-to-fine+adapter vs mlp+adapter: Δ={s['mean_diff']:+.4f}  "
                f"p_t={p_str(s['t_test_p'])}  p_w={p_str(s['wilcoxon_p'])}"
            )
    abl = out / "adapters-regular-mlp-ablation.json"
    if abl.exists():
        r = json.loads(abl.read_text())
        main = found.get(("regular", "mlp"))
        print("\n-- adapter ablation (regular split, MLP tower; same epochs)")
        rows = (
            {"hierarchical sampler, multi-similarity + distill": main["variants"]["hierarchical"]} if main else {}
        ) | {
            {
                "random-sampler": "random sampler, multi-similarity + distill",
                "distill-only": "distillation only (no metric loss)",
                "triplet": "hierarchical, semi-hard triplet + distill",
            }.get(k, k): v
            for k, v in r["variants"].items()
        }
        for name, v in rows.items():
            print(
                f"{name:<50} test nDCG@10 {v['test_ndcg@10']:.4f}  kept {v['kept_of_full']:.2%}  "
                f"best validation {max(h['val_metric'] for h in v['history']):.4f}  train {v['train_s']:.0f} s"
            )


def report_rerank(r: dict) -> None:
    print(f"\n== Diversity reranking of the top-{r['candidates']} ({r['model']}; {r['n_queries']} test queries) ==")
    print(
        f"{'method':<34} {'nDCG@10':>8} {'ΔnDCG':>7} {'ILD@10':>7} {'ΔILD':>7} {'coverage':>8} {'novelty':>8} "
        f"{'ms/query':>8}"
    )
    base = r["methods"]["top-10"]
    for name, m in r["methods"].items():
        print(
            f"{name:<34} {fmt(m['ndcg@10']):>8} {m['ndcg@10'] / base['ndcg@10'] - 1:>+7.1%} {fmt(m['ild@10']):>7} "
            f"{m['ild@10'] / base['ild@10'] - 1:>+7.1%} {m['coverage']:>8.4f} {m['novelty']:>8.3f} "
            f"{m['ms_per_query']:>8.3f}"
        )
    for name, m in r["methods"].items():
        if "history" in m:  # the list-wise rerankers: what selection saw on its half of validation
            h0, kept = m["history"][0], next(h for h in m["history"] if h["step"] == m["history"][0]["kept_step"])
            print(
                f"  {name}: selection half nDCG@10 {kept['ndcg'] / h0['plain']['ndcg'] - 1:+.1%}, ILD@10 "
                f"{kept['ild'] / h0['plain']['ild'] - 1:+.1%} (kept step {h0['kept_step']} of "
                f"{m['history'][-1]['step']}, "
                f"start λ={h0['lambda']}, λ ×{kept.get('lambda_scale', 1.0)}; train {m['train_s']:.0f} s)"
            )
    for line in r.get("verdict", []):
        print(line)
    ok = [
        name
        for name, m in r["methods"].items()
        if name.startswith("MMR") and m["ild@10"] >= 1.2 * base["ild@10"] and m["ndcg@10"] >= 0.95 * base["ndcg@10"]
    ]
    print(f"MMR settings meeting both targets (ILD ≥ +20%, nDCG ≥ −5%) on test: {', '.join(ok) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["all", "towers", "adapters", "rerank", "report"], default="all")
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared/data/fashion-products"))
    ap.add_argument("--cache-dir", default=None, help="embedding cache (e.g. a prepared /tmp/lookalike-bench-cache-*)")
    ap.add_argument("--out", default=str(ROOT / "runs/bench-towers"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--adapter-epochs", type=int, default=36)  # AdapterConfig's default, chosen on validation
    ap.add_argument("--cold-field", default="articleType")
    ap.add_argument("--cold-fraction", type=float, default=0.1)
    ap.add_argument("--rerank-steps", type=int, default=200)
    ap.add_argument("--mu", type=float, nargs="+", default=[0.2, 0.3, 0.5], help="diversity weights of the reranker")
    ap.add_argument("--splits", nargs="+", default=["regular", "cold-start"], choices=["regular", "cold-start"])
    ap.add_argument("--tower", help="only this tower (used by --parallel's child processes)")
    ap.add_argument("--parallel", action="store_true", help="one process per split and tower")
    ap.add_argument("--ablation", action="store_true", help="(adapters stage) sampler / loss variants")
    args = ap.parse_args()
    forward = [
        "--catalog",
        args.catalog,
        "--out",
        args.out,
        "--epochs",
        str(args.epochs),
        "--adapter-epochs",
        str(args.adapter_epochs),
        "--cold-field",
        args.cold_field,
        "--cold-fraction",
        str(args.cold_fraction),
        *(["--cache-dir", args.cache_dir] if args.cache_dir else []),
        *(["--limit", str(args.limit)] if args.limit else []),
    ]
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from lookalike.config import ColdStartConfig
    from lookalike.training.adapter import AdapterConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = base_config(args)
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # on a few shared cores, intra-op threads thrash; the header below prints the setting
    from lookalike.studies.towers import TOWERS, compare_towers, merge_results

    runs = [(split, tower) for split in args.splits for tower in TOWERS]
    machine = Machine.start("towers.py", study_processes=len(runs) if args.parallel and not args.tower else 1)
    if args.stage in ("all", "towers") and args.parallel:
        # One process per (split, tower): the fair scheduler then gives this study more of a shared machine.
        procs = [
            spawn(
                [sys.executable, __file__, "--stage", "towers", "--splits", split, "--tower", tower, *forward],
                out / f"log-{split}-{tower}.txt",
            )
            for split, tower in runs
        ]
        if any(p.wait() for p in procs):
            sys.exit("a tower run failed; see the logs in " + str(out))
    elif args.stage in ("all", "towers"):
        for split in args.splits:
            for tower in [args.tower] if args.tower else TOWERS:
                compare_towers(
                    cfg,
                    out / f"{split}-{tower}",
                    AdapterConfig(epochs=args.adapter_epochs),
                    ColdStartConfig(field=args.cold_field, fraction=args.cold_fraction),
                    (tower,),
                    (split,),
                )
    if args.stage == "adapters" and args.tower:
        from lookalike.studies.towers import adapter_ablation, split_config

        split = args.splits[0]
        scfg = split_config(cfg, split, ColdStartConfig(field=args.cold_field, fraction=args.cold_fraction))
        variants = {"hierarchical": AdapterConfig(epochs=args.adapter_epochs)}
        if split == "regular" and args.tower == "mlp" and args.ablation:
            variants = {
                "random-sampler": AdapterConfig(epochs=args.adapter_epochs, sampler="random"),
                "triplet": AdapterConfig(epochs=args.adapter_epochs, loss="triplet"),
                "distill-only": AdapterConfig(epochs=args.adapter_epochs, loss="none"),
            }
        res = adapter_ablation(
            scfg, out / f"{split}-{args.tower}/{split}/{args.tower}/checkpoints/best_model.pt", variants
        )
        name = f"adapters-{split}-{args.tower}{'-ablation' if args.ablation else ''}.json"
        (out / name).write_text(json.dumps(res, indent=2, ensure_ascii=False))
        return
    if args.tower:
        return
    done = [out / f"{s}-{t}" for s, t in runs if (out / f"{s}-{t}" / "results.json").exists()]
    if done:
        (out / "results.json").write_text(json.dumps(merge_results(done), indent=2, ensure_ascii=False))
    if args.stage == "adapters":
        jobs = [[*forward, "--splits", s, "--tower", t] for s, t in runs] + [
            [*forward, "--splits", "regular", "--tower", "mlp", "--ablation"]
        ]
        procs = [
            spawn([sys.executable, __file__, "--stage", "adapters", *j], out / f"log-adapters-{'-'.join(j[-3:])}.txt")
            for j in jobs
        ]
        if any(p.wait() for p in procs):
            sys.exit("an adapter run failed; see the logs in " + str(out))
    if args.stage in ("all", "rerank"):
        from lookalike.studies.rerankers import compare_rerankers
        from lookalike.training.listwise import ListwiseConfig

        compare_rerankers(
            cfg,
            out / "regular-mlp/regular/mlp/checkpoints/best_model.pt",
            out,
            ListwiseConfig(steps=args.rerank_steps),
            mus=tuple(args.mu),
        )
    if (out / "results.json").exists():
        report_towers(json.loads((out / "results.json").read_text()))
    report_adapters(out)
    if (out / "rerank.json").exists():
        report_rerank(json.loads((out / "rerank.json").read_text()))
    print(f"\n(wall {time.perf_counter() - t0:.0f} s)")
    machine.finish()


if __name__ == "__main__":
    main()
