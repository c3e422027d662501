"""Train at several InfoNCE temperatures on the same split and compare: table, chart, best value.

The best temperature is chosen on the validation split; test figures are reported beside it but
never used for the choice.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from lookalike.config import RunConfig
from lookalike.evaluation.plots import plt
from lookalike.pipeline import prepare, run_main
from lookalike.provenance import provenance

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURES = [0.03, 0.05, 0.07, 0.1, 0.15]


def temperature_study(
    cfg: RunConfig, temperatures: list[float] | None = None, learnable: bool = True, progress: bool = True
) -> dict:
    cfg = cfg.apply_quick()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg, progress)
    settings = [(f"{t:g}", t, False) for t in (temperatures or DEFAULT_TEMPERATURES)]
    if learnable:
        settings.append(("learnable", 0.07, True))
    rows = []
    for label, t, learn in settings:
        logger.info(f"--- temperature {label} ---")
        run_cfg = cfg.model_copy(
            update={
                "out_dir": str(out / f"t={label}"),
                "train": cfg.train.model_copy(update={"temperature": t, "learnable_temperature": learn}),
            }
        )
        s = run_main(run_cfg, progress=progress, prep=prep)
        results = json.loads(Path(s["training_results"]).read_text())
        rows.append(
            {
                "temperature": label,
                "final_temperature": round(results["history"][results["best_epoch"] - 1]["temperature"], 4),
                "best_epoch": results["best_epoch"],
                f"val {cfg.train.val_metric}": round(results["best_val_metric"], 4),
                **{
                    f"test {k}": v
                    for k, v in s["headline"].items()
                    if k.startswith(("json_to_image/attribute/", "text_to_image/attribute/")) and "anchor" not in k
                },
            }
        )
    metric_col = f"val {cfg.train.val_metric}"
    best = max(rows, key=lambda r: r[metric_col])
    with open(out / "temperature_study.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    md.append(f"\nBest on validation: temperature {best['temperature']} ({metric_col} = {best[metric_col]}).")
    (out / "temperature_study.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [r["temperature"] for r in rows]
    ax.bar(labels, [r[metric_col] for r in rows], color=["tab:green" if r is best else "tab:blue" for r in rows])
    ax.set_xlabel("temperature")
    ax.set_ylabel(metric_col)
    ax.set_title("InfoNCE temperature study (validation split)")
    for i, r in enumerate(rows):
        ax.text(i, r[metric_col], f"{r[metric_col]:.3f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "temperature_study.png", dpi=110)
    plt.close(fig)
    summary = {
        **provenance(),
        "config": cfg.model_dump(mode="json", by_alias=True),
        "rows": rows,
        "best": best,
        "split_sizes": prep.sizes,
    }
    (out / "temperature_study.json").write_text(json.dumps(summary, indent=2))
    return summary
