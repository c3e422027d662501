"""`lookalike compare-towers` (MLP vs coarse-to-fine, ± adapter, regular + cold-start splits) and
`lookalike compare-rerankers` (plain top-10 vs MMR vs the list-wise reranker)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lookalike.errors import LookalikeError


def _cold(args):
    from lookalike.config import ColdStartConfig

    try:
        return ColdStartConfig(field=args.cold_field, values=args.cold_values, fraction=args.cold_fraction)
    except ValueError as e:
        raise LookalikeError(f"invalid cold-start option: {e}".replace("\n", "; ")) from None


def cmd_compare_towers(args) -> None:
    from lookalike.cli import _config
    from lookalike.comparison.towers import TOWERS, compare_towers
    from lookalike.training.adapter import AdapterConfig

    cfg = _config(args).apply_quick()
    unknown = [t for t in args.towers if t not in TOWERS]
    if unknown:
        raise LookalikeError(f"unknown towers {unknown}; choose from {list(TOWERS)}")
    out = Path(args.out or "runs/compare-towers")
    r = compare_towers(cfg, out, AdapterConfig(epochs=args.adapter_epochs, out_dim=args.adapter_dim), _cold(args),
                       tuple(args.towers), tuple(args.splits), progress=not args.no_progress)
    for split, block in r["splits"].items():
        for tower, t in block["towers"].items():
            print(f"{split:<11} {tower:<15} nDCG@10 {t['test_ndcg@10']:.4f}  +adapter {t['adapter']['test_ndcg@10']:.4f}  "
                  f"params {t['tower_params']:,}  train {t['train_s']:.0f} s")
        for name, s in block.get("significance", {}).items():
            print(f"{split:<11} {name}: Δ {s['mean_diff']:+.4f}, paired t p={s['t_test_p']:.2g}, Wilcoxon p={s['wilcoxon_p']:.2g}")
    print(f"wrote {out / 'results.json'} and {out / 'per_query.npz'}")


def cmd_compare_rerankers(args) -> None:
    from lookalike.comparison.rerankers import compare_rerankers
    from lookalike.model import LookalikeModel
    from lookalike.training.listwise import ListwiseConfig

    try:
        lcfg = ListwiseConfig(steps=args.steps, min_ild_gain=args.min_ild_gain)
    except ValueError as e:
        raise LookalikeError(f"invalid reranker option: {e}".replace("\n", "; ")) from None
    cfg = LookalikeModel.load(args.model)[0].config.apply_quick()  # the split and data the model was trained on
    updates = {"encoder": cfg.encoder.model_copy(update={"cache_dir": args.cache_dir})} if args.cache_dir else {}
    cfg = cfg.model_copy(update=updates)
    out = Path(args.out or "runs/compare-rerankers")
    out.mkdir(parents=True, exist_ok=True)
    r = compare_rerankers(cfg, Path(args.model), out, lcfg, mus=tuple(args.mu),
                          progress=not args.no_progress)
    for name, m in r["methods"].items():
        print(f"{name:<30} nDCG@10 {m['ndcg@10']:.4f}  ILD@10 {m['ild@10']:.4f}  coverage {m['coverage']:.4f}  "
              f"novelty {m['novelty']:.3f}")
    print("\n".join(r["verdict"]))
    print(f"wrote {out / 'rerank.json'}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    from lookalike.cli import _add_run_options

    p = sub.add_parser("compare-towers", help="MLP vs coarse-to-fine tower, ± 128-d adapter, regular and cold-start splits")
    _add_run_options(p)
    p.add_argument("--towers", nargs="+", default=["mlp", "coarse-to-fine"])
    p.add_argument("--splits", nargs="+", choices=["regular", "cold-start"], default=["regular", "cold-start"])
    p.add_argument("--cold-field", default="articleType", help="field whose held-out values make the cold-start test split")
    p.add_argument("--cold-values", nargs="+", help="values to hold out (default: chosen by hash to cover --cold-fraction)")
    p.add_argument("--cold-fraction", type=float, default=0.1)
    p.add_argument("--adapter-dim", type=int, default=128)
    p.add_argument("--adapter-epochs", type=int, default=36, help="stage-2 adapter epochs (early-stopped on validation)")
    p.set_defaults(func=cmd_compare_towers)

    r = sub.add_parser("compare-rerankers", help="plain top-10 vs MMR vs the learned list-wise diversity reranker")
    r.add_argument("--model", required=True, help="trained checkpoint; its own catalogue, split and tower are used")
    r.add_argument("--out", help="output directory (default runs/compare-rerankers)")
    r.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike or $LOOKALIKE_CACHE)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--steps", type=int, default=200, help="training steps of each list-wise reranker")
    r.add_argument("--mu", type=float, nargs="+", default=[0.2, 0.3, 0.5], help="diversity weights to train")
    r.add_argument("--min-ild-gain", type=float, default=0.21,
                   help="selection floor: validation ILD@10 at least (1 + this) × plain top-10's (default 0.21)")
    r.set_defaults(func=cmd_compare_rerankers)
