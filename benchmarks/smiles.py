"""Smile-detection study: Haar vs fer vs our fine-tuned model, then the original team's mistake on purpose.

    python benchmarks/smiles.py                 # everything below, printing the figures
    python benchmarks/smiles.py --size-study    # also: linear-probe AUC and speed per encoder input size
    python benchmarks/smiles.py --unfreeze-study  # also: head-only vs last block unfrozen, 2,000 training images

Steps (each a `lookalike` subprocess, so wall times are what a user sees):
 1. finetune-classifier with the defaults (70/15/15 stratified split by file, early stopping on val AUC);
 2. the mistake: the same split, but 170 training and 40 validation images, 50 epochs, no early
    stopping, no class weighting, a 512-unit head without weight decay, constant learning rate;
 3. `ab` on the full held-out test split: haar, fer, ours, overfit — one report;
 4. `ab` as the original team did it: thresholds on the overfit run's 40 validation images, 80 test
    images — what can (not) be told apart, and what the flags say;
 5. `ab` on 2,000 images with three models: the wall-time target (< 2 minutes on 2 cores).
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
DATA = ROOT.parent / "shared" / "data" / "smiles"
LOOKALIKE = [sys.executable, "-m", "lookalike.cli"]


def run(args: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(LOOKALIKE + args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}; see {log}")
    print(f"  [{wall:.0f} s] lookalike {' '.join(args)}", flush=True)
    return wall


def table(ab: dict) -> None:
    print(
        f"    test n={ab['data']['test']['n']} ({ab['data']['test']['positives']} positive), "
        f"thresholds on val n={ab['data']['val']['n']}"
    )
    for m in ab["models"]:
        t, ci = m["test"], m["test"]["bootstrap_ci"]
        lo, hi = t["roc_auc_delong_ci"]
        print(
            f"    {m['name']:<9} AUC {t['roc_auc']:.4f} [{lo:.4f}, {hi:.4f}]  PR AUC {t['pr_auc']:.4f}  "
            f"thr {m['threshold']['tuned']:.4g}  acc@thr {t['at_tuned']['accuracy']:.4f} "
            f"[{ci['at_tuned']['accuracy'][0]:.4f}, {ci['at_tuned']['accuracy'][1]:.4f}]  "
            f"F1@thr {t['at_tuned']['f1']:.4f}  acc@0.5 {t['at_fixed']['accuracy']:.4f}  "
            f"log-loss val {m['val']['log_loss']:.4f} test {t['log_loss']:.4f}  ECE {t['calibration']['ece']:.3f}"
        )
    for p in ab["pairs"]:
        a, c = p["roc_auc"], p["accuracy_at_tuned"]
        print(
            f"    {p['a']:>8} − {p['b']:<8} ΔAUC {a['diff']:+.4f} [{a['ci'][0]:+.4f}, {a['ci'][1]:+.4f}] "
            f"DeLong p={a['p_value']:.2g} (MDD {a['mdd']:.3f}); Δacc {c['diff']:+.4f} "
            f"[{c['bootstrap_ci'][0]:+.4f}, {c['bootstrap_ci'][1]:+.4f}] McNemar p={c['mcnemar']['p_value']:.2g} "
            f"(MDD {c['mdd']:.3f})"
        )
    flags = (
        ab["flags"]
        + [f"{m['name']}: {f}" for m in ab["models"] for f in m["flags"]]
        + [f for p in ab["pairs"] for f in p["flags"]]
    )
    for f in flags:
        print(f"    FLAG {f}")


def training(summary: dict, name: str) -> None:
    h = summary["history"]
    kept = h[summary["kept_epoch"] - 1]
    low = min(h, key=lambda r: r["val_loss"])
    print(
        f"    {name}: train {summary['n']['train']}, val {summary['n']['val']}; {summary['epochs_run']} epochs, "
        f"kept {summary['kept_epoch']} (best {summary['best_epoch']}); at kept: train loss "
        f"{kept['train_loss_eval']:.4g}, "
        f"val loss {kept['val_loss']:.4g}, val AUC {kept['val_auc']:.4f}; lowest val loss {low['val_loss']:.4g} "
        f"(epoch {low['epoch']}); Youden threshold on its val {summary['val_at_kept']['youden_threshold']:.4g}; "
        f"ONNX |Δp| {summary['onnx']['max_abs_diff_vs_torch']:.1g}; features {summary['timings']['features_s']:.0f} s, "
        f"training {summary['timings']['train_s']:.0f} s"
    )
    for w in summary["warnings"]:
        print(f"      WARNING {w}")


def size_study(out: Path) -> None:
    """Linear-probe AUC of frozen EfficientNet-Lite0 features per input size (3,000 faces, 2,000 train)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from lookalike.catalogue.schema import ImageRef
    from lookalike.classify.data import load_labelled, stratified_subsample
    from lookalike.encoders.embedder import embed_images
    from lookalike.encoders.registry import create_image_encoder

    d = load_labelled(DATA)
    d = d.subset(np.random.default_rng(0).permutation(stratified_subsample(d.labels, 3000, 1)))
    cache = out / "size-study-cache"  # fresh: every size is computed, so the speed is real
    for size in ((128, 128), (160, 160), (224, 224)):
        enc = create_image_encoder("efficientnet-lite0", image_size=size, cache_dir=cache)
        r = embed_images([ImageRef(p) for p in d.paths], enc, cache, progress=False)
        clf = LogisticRegression(C=0.5, max_iter=3000).fit(r.vectors[:2000], d.labels[:2000])
        auc = roc_auc_score(d.labels[2000:], clf.decision_function(r.vectors[2000:]))
        print(f"    {size[0]}×{size[1]}: {len(d) / r.seconds:.0f} img/s, probe AUC {auc:.4f}", flush=True)


def unfreeze_study(out: Path, good: Path) -> None:
    """Same split, 2,000 training images: head on frozen features vs the encoder's last block trained too."""
    print("6. unfreezing the last block (2,000 training images; same validation and test images):")
    runs = {"head2000": [], "unfrozen2000": ["--unfreeze-last-block", "--epochs", "30", "--patience", "5"]}
    for name, extra in runs.items():
        run(
            [
                "finetune-classifier",
                "--data",
                str(DATA),
                "--out",
                str(out / name),
                "--train-limit",
                "2000",
                "--no-progress",
                *extra,
            ],
            out / f"{name}.log",
        )
        training(json.loads((out / name / "summary.json").read_text()), name)
    run(
        [
            "ab",
            "--data",
            str(DATA),
            "--split",
            str(good / "split.json"),
            "--models",
            "fer",
            f"ours={good / 'model.onnx'}",
            *[f"{n}={out / n / 'model.onnx'}" for n in runs],
            "--out",
            str(out / "ab-unfreeze"),
            "--no-progress",
        ],
        out / "ab-unfreeze.log",
    )
    table(json.loads((out / "ab-unfreeze" / "ab.json").read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "smiles"))
    ap.add_argument("--size-study", action="store_true")
    ap.add_argument("--unfreeze-study", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from lookalike.encoders.base import default_threads

    machine = Machine.start("smiles.py", onnxruntime=default_threads())
    if a.size_study:
        print("encoder input size:")
        size_study(out)
    good, bad = out / "finetuned", out / "overfit"
    print("1-2. fine-tuning:")
    run(["finetune-classifier", "--data", str(DATA), "--out", str(good), "--no-progress"], out / "finetune.log")
    run(
        [
            "finetune-classifier",
            "--data",
            str(DATA),
            "--out",
            str(bad),
            "--train-limit",
            "170",
            "--val-limit",
            "40",
            "--epochs",
            "50",
            "--no-early-stopping",
            "--no-class-weighting",
            "--hidden",
            "512",
            "--weight-decay",
            "0",
            "--lr-schedule",
            "none",
            "--lr",
            "3e-3",
            "--no-progress",
        ],
        out / "overfit.log",
    )
    for name, d in (("ours", good), ("overfit", bad)):
        training(json.loads((d / "summary.json").read_text()), name)
    models = ["haar", "fer", f"ours={good / 'model.onnx'}", f"overfit={bad / 'model.onnx'}"]
    split = str(good / "split.json")
    print("3. A/B on the full held-out test split:")
    run(
        [
            "ab",
            "--data",
            str(DATA),
            "--split",
            split,
            "--models",
            *models,
            "--out",
            str(out / "ab-full"),
            "--no-progress",
        ],
        out / "ab-full.log",
    )
    table(json.loads((out / "ab-full" / "ab.json").read_text()))
    print("4. A/B as the original team had it: thresholds on the overfit run's 40 validation images, 80 test images:")
    run(
        [
            "ab",
            "--data",
            str(DATA),
            "--split",
            str(bad / "split.json"),
            "--test-limit",
            "80",
            "--models",
            *models,
            "--out",
            str(out / "ab-80"),
            "--no-progress",
        ],
        out / "ab-80.log",
    )
    table(json.loads((out / "ab-80" / "ab.json").read_text()))
    print("5. speed target: ab on 2,000 images, three models:")
    wall = run(
        [
            "ab",
            "--data",
            str(DATA),
            "--split",
            split,
            "--limit",
            "2000",
            "--models",
            *models[:3],
            "--out",
            str(out / "ab-2000"),
            "--no-progress",
        ],
        out / "ab-2000.log",
    )
    ab = json.loads((out / "ab-2000" / "ab.json").read_text())
    print(
        f"    {ab['data']['val']['n'] + ab['data']['test']['n']} images, wall {wall:.1f} s (target < 120 s); "
        + ", ".join(f"{m['name']} scoring {m['seconds']:.1f} s" for m in ab["models"])
        + f"; load {ab['timings']['load_s']:.1f} s, report {ab['timings']['report_s']:.1f} s"
    )
    if a.unfreeze_study:
        unfreeze_study(out, good)
    print(f"reports: {out}/ab-full/report.html, {out}/ab-80/report.html, {out}/ab-2000/report.html")
    machine.finish()


if __name__ == "__main__":
    main()
