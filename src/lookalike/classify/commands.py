"""CLI: `lookalike ab` and `lookalike finetune-classifier`."""

from __future__ import annotations

import time

from pydantic import ValidationError

from lookalike.errors import LookalikeError


def _validated(cls, values: dict):
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise LookalikeError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None


def cmd_ab(args) -> None:
    from lookalike.classify.compare import ABConfig, run_ab

    cfg = _validated(ABConfig, {
        "data": args.data, "models": args.models, "out_dir": args.out, "split": args.split,
        "val_fraction": args.val_fraction, "limit": args.limit, "test_limit": args.test_limit, "seed": args.seed,
        "fixed_threshold": args.threshold, "n_boot": args.n_boot})
    t = time.perf_counter()
    res = run_ab(cfg, progress=not args.no_progress)
    wall = time.perf_counter() - t
    d = res["data"]
    print(f"\n{d['val']['n']} validation images (thresholds), {d['test']['n']} test images; "
          f"skipped while loading: {sum(d['load_report']['skipped'].values())}")
    print(f"{'model':<14} {'ROC AUC [DeLong 95% CI]':<26} {'thr(val)':>8} {'acc@thr [bootstrap CI]':<24} "
          f"{'F1@thr':>7} {'acc@' + str(cfg.fixed_threshold):>8}")
    for m in res["models"]:
        t_, ci = m["test"], m["test"]["bootstrap_ci"]["at_tuned"]["accuracy"]
        lo, hi = t_["roc_auc_delong_ci"]
        print(f"{m['name']:<14} {t_['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]      {m['threshold']['tuned']:>8.3g} "
              f"{t_['at_tuned']['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]     {t_['at_tuned']['f1']:>7.3f} "
              f"{t_['at_fixed']['accuracy']:>8.3f}")
    for p in res["pairs"]:
        a, c = p["roc_auc"], p["accuracy_at_tuned"]
        print(f"{p['a']} vs {p['b']}: ΔAUC {a['diff']:+.3f} (DeLong p={a['p_value']:.2g}), "
              f"Δacc {c['diff']:+.3f} (McNemar p={c['mcnemar']['p_value']:.2g})")
    flags = res["flags"] + [f"{m['name']}: {f}" for m in res["models"] for f in m["flags"]] + \
        [f for p in res["pairs"] for f in p["flags"]]
    for f in flags:
        print(f"FLAG: {f}")
    print(f"wrote {cfg.out_dir}/report.html, ab.json, charts/*.png")
    print(f"wall time {wall:.1f} s")


def cmd_finetune(args) -> None:
    from lookalike.training.classifier import FinetuneConfig, finetune

    cfg = _validated(FinetuneConfig, {
        "data": args.data, "out_dir": args.out, "seed": args.seed, "train_limit": args.train_limit,
        "val_limit": args.val_limit, "image_size": args.image_size, "unfreeze_last_block": args.unfreeze_last_block,
        "hidden": args.hidden, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "lr_schedule": args.lr_schedule,
        "early_stopping": False if args.no_early_stopping else None, "patience": args.patience,
        "monitor": args.monitor, "class_weighting": False if args.no_class_weighting else None,
        "cache_dir": args.cache_dir})
    s = finetune(cfg, progress=not args.no_progress)
    print(f"\ntrain {s['n']['train']}, val {s['n']['val']}, held-out test {s['n']['test_held_out']} images; "
          f"{s['epochs_run']} epochs, best epoch {s['best_epoch']}, kept epoch {s['kept_epoch']}")
    print(f"validation AUC {s['val_at_kept']['auc']:.4f}, Youden threshold {s['val_at_kept']['youden_threshold']:.4g}; "
          f"ONNX vs PyTorch max |Δp| {s['onnx']['max_abs_diff_vs_torch']:.2g}")
    for w in s["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {cfg.out_dir}/model.onnx (+ .json), split.json, summary.json, training_curves.png")
    print(f"next: lookalike ab --data {cfg.data} --split {cfg.out_dir}/split.json --models haar fer {cfg.out_dir}/model.onnx")


def add_commands(sub) -> None:
    a = sub.add_parser("ab", help="compare binary image classifiers: DeLong, McNemar, bootstrap CIs, HTML report")
    a.add_argument("--data", required=True, help="folder with positives/ and negatives/, or a CSV path,label")
    a.add_argument("--models", nargs="+", required=True,
                   help="two or more of: haar, fer, path/to/model.onnx; optionally label=spec")
    a.add_argument("--out", help="output folder (default runs/ab)")
    a.add_argument("--split", help="split.json from finetune-classifier: thresholds on its val, metrics on its test")
    a.add_argument("--val-fraction", type=float, help="without --split: share of images used to tune thresholds (0.3)")
    a.add_argument("--limit", type=int, help="stratified subsample of N images (validation + test)")
    a.add_argument("--test-limit", type=int, help="stratified subsample of N test images")
    a.add_argument("--threshold", type=float, help="the fixed threshold reported besides the tuned one (0.5)")
    a.add_argument("--n-boot", type=int, help="bootstrap resamples (1000)")
    a.add_argument("--seed", type=int)
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=cmd_ab)

    f = sub.add_parser("finetune-classifier", help="train a head on frozen image features, early-stopped, export ONNX")
    f.add_argument("--data", required=True, help="folder with positives/ and negatives/, or a CSV path,label")
    f.add_argument("--out", help="output folder (default runs/classifier)")
    f.add_argument("--seed", type=int)
    f.add_argument("--train-limit", type=int, help="use only N training images (to study small data)")
    f.add_argument("--val-limit", type=int, help="use only N validation images")
    f.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    f.add_argument("--unfreeze-last-block", action="store_true", help="also train the encoder's last block")
    f.add_argument("--hidden", type=int, help="hidden units of the head (0 = linear; default 256)")
    f.add_argument("--epochs", type=int)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--lr", type=float)
    f.add_argument("--weight-decay", type=float)
    f.add_argument("--lr-schedule", choices=["cosine", "plateau", "none"])
    f.add_argument("--no-early-stopping", action="store_true", help="train all epochs and keep the last")
    f.add_argument("--patience", type=int)
    f.add_argument("--monitor", choices=["val_auc", "val_loss"])
    f.add_argument("--no-class-weighting", action="store_true")
    f.add_argument("--cache-dir")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_finetune)
