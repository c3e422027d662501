"""Default vs tuned on the test split of fashion-products, with the study's budget (`lookalike tune`'s protocol):

    python benchmarks/tune.py --markdown                                        # the issue's budget
    python benchmarks/tune.py --limit 6000 --trials 8 --max-epochs 8 --seeds 3  # an affordable one
    python benchmarks/tune.py --out DIR --trials N ...  # DIR's study holding N finished trials: none run again

A study (seeded TPE, Hyperband by default) over the packaged search space, its trials scored on validation only
with the hubness correction; then the default config and the best one are trained and evaluated on test, over
`--seeds` seeds with a paired t-test, and the `--ensemble` best trials averaged into one model are evaluated on
test once. It prints, side by side (default, tuned, ensemble): all-seven hit@10 and hit@5,
gender+articleType+baseColour P@10, articleType P@10, anchor hit@10 and instance MRR (JSON → image, corrected
ranking), the best trial's validation beside its test figure, the trials complete and pruned and the epochs
pruning saved, against the issue's goals. Everything the study wrote stays in --out (tuning_report.json …).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import Machine  # noqa: E402

# (label, key in tuning_report's test figures, the goal on test)
FIGURES = [
    ("all-seven hit@10", "json_to_image/attribute/hit@10", 0.90),
    ("all-seven hit@5", "json_to_image/attribute/hit@5", 0.82),
    ("gender+articleType+baseColour P@10", "json_to_image/attribute:gender+articleType+baseColour/precision@10", 0.47),
    ("articleType P@10", "json_to_image/attribute:articleType/precision@10", 0.87),
    ("anchor hit@10 (all seven)", "json_to_image/attribute/anchor/hit@10", 0.93),
    ("instance MRR", "json_to_image/instance/mrr", None),
    ("all-seven nDCG@10", "json_to_image/attribute/ndcg@10", None),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--catalog", default=str(ROOT.parent / "shared" / "data" / "fashion-products"))
    p.add_argument("--config", default="fashion-products")
    p.add_argument("--space", help="search space JSON (default: the packaged one)")
    p.add_argument("--limit", type=int, help="a stratified subset of N products (default: all)")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--timeout", type=float)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pruner", choices=["hyperband", "median", "none"], default="hyperband")
    p.add_argument("--ensemble", type=int, default=3, help="average the K best complete trials (0: none)")
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike)")
    p.add_argument("--out", default="runs/bench-tune")
    p.add_argument("--markdown", action="store_true", help="print the table to paste (alone on stdout)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    machine = Machine.start("tune.py", markdown=args.markdown)

    from lookalike.config import load_config
    from lookalike.studies.tune import TuneOptions, tune

    overrides = {"data.catalog": args.catalog, "data.limit": args.limit, "encoder.cache_dir": args.cache_dir}
    cfg = load_config(args.config, overrides)
    opts = TuneOptions(
        out=args.out,
        space=args.space,
        trials=args.trials,
        max_epochs=args.max_epochs,
        timeout=args.timeout,
        seeds=args.seeds,
        pruner=args.pruner,
        ensemble=args.ensemble,
    )
    t0 = time.perf_counter()
    r = tune(cfg, opts, progress=False)
    wall = time.perf_counter() - t0
    b, sizes = r["budget"], r["split"]["sizes"]
    best, default, paired = r["best"], r["default"], r["seeds"]["paired"]
    n = len(r["seeds"]["seeds"])
    ens = r.get("ensemble") or {"built": False, "reason": "--ensemble 0", "members": []}
    built = ens["built"]
    k = len(ens["members"])
    head = f"ensemble of top {k}" if built else "ensemble"
    rows = [
        f"| JSON → image, test (corrected ranking) | default | tuned | {head} | Δ tuned − default, mean over {n} seeds "
        "| paired t p | goal |",
        "|---|---|---|---|---|---|---|",
    ]

    def met(goal: float | None, key: str) -> str:
        if goal is None:
            return ""
        tested = (("tuned", best["test"]), ("ensemble", ens.get("test") or {}))
        reached = [name for name, figures in tested if figures.get(key, 0) >= goal]
        return f"≥ {goal} ({'met by ' + ' and '.join(reached) if reached else 'missed'})"

    for label, key, goal in FIGURES:
        if key not in best["test"]:
            continue
        pr = paired[key]
        p_txt = f"{pr['p']:.3g}" if pr["p"] is not None else "–"
        e_txt = f"{ens['test'][key]:.4f}" if built and ens.get("test") else "–"
        rows.append(
            f"| {label} | {default['test'][key]:.4f} | {best['test'][key]:.4f} | {e_txt} | {pr['mean_diff']:+.4f} "
            f"| {p_txt} | {met(goal, key)} |"
        )
    e_val = f"{ens['validation']:.4f}" if built else "–"
    rows.append(
        f"| validation {cfg.train.val_metric} (corrected) | {default['validation']:.4f} | {best['validation']:.4f} "
        f"(best trial in the study: {best['validation_in_study']:.4f}, chosen among {b['complete']}) | {e_val} "
        "| | | |"
    )
    table = "\n".join(rows)
    if built:
        members = ", ".join(f"{m['trial']} ({m['validation']:.4f})" for m in ens["members"])
        ensemble = f"Ensemble: trials {members} by validation, averaged into {ens['checkpoint']}"
        ensemble += f"; {ens['note']}." if "note" in ens else "."
    else:
        ensemble = f"Ensemble not built: {ens['reason']}."
    st = r["study"]
    span = f", span {st['span_seconds']:.0f} s" if st.get("span_seconds") is not None else ""
    budget = (
        f"{sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,} products; {b['trials']} trials "
        f"({b['complete']} complete, {b['pruned']} pruned, {b['fail']} failed), pruner {args.pruner}, at most "
        f"{args.max_epochs} epochs a trial; epochs run {b['epochs_run']} of {b['epochs_planned']} planned: pruning "
        f"saved {b['epochs_saved_by_pruning']} ({b['epochs_saved_by_pruning_share']:.1%}; goal ≥ 50%), early "
        f"stopping {b['epochs_saved_by_early_stopping']}; study: trials {st['trial_seconds']:.0f} s summed{span}, "
        f"this process {st['seconds']:.0f} s; all {wall:.0f} s."
    )
    best_params = json.dumps(r["best_trial"]["params"], sort_keys=True)
    if args.markdown:
        machine.table(f"{table}\n\n{budget}\n\n{ensemble}\n\nBest trial {r['best_trial']['number']}: `{best_params}`")
    else:
        print(table)
        print(budget)
        print(ensemble)
        print(f"best trial {r['best_trial']['number']}: {best_params}")
        print(f"wrote {Path(args.out) / 'tuning_report.json'}")
    machine.finish()


if __name__ == "__main__":
    main()
