"""CLI: `lookalike finetune-classifier` (the classifier A/B study, `lookalike ab`, is in lookalike.studies)."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)


def validated(cls, values: dict):
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        raise LookalikeError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None


def cmd_finetune(args) -> None:
    from lookalike.training.classifier import FinetuneConfig, finetune

    cfg = validated(
        FinetuneConfig,
        {
            "data": args.data,
            "out_dir": args.out,
            "seed": args.seed,
            "train_limit": args.train_limit,
            "val_limit": args.val_limit,
            "image_size": args.image_size,
            "unfreeze_last_block": args.unfreeze_last_block,
            "hidden": args.hidden,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "lr_schedule": args.lr_schedule,
            "early_stopping": False if args.no_early_stopping else None,
            "patience": args.patience,
            "monitor": args.monitor,
            "class_weighting": False if args.no_class_weighting else None,
            "cache_dir": args.cache_dir,
        },
    )
    s = finetune(cfg, progress=not args.no_progress)
    print(
        f"\ntrain {s['n']['train']}, val {s['n']['val']}, held-out test {s['n']['test_held_out']} images; "
        f"{s['epochs_run']} epochs, best epoch {s['best_epoch']}, kept epoch {s['kept_epoch']}"
    )
    print(
        f"validation AUC {s['val_at_kept']['auc']:.4f}, Youden threshold {s['val_at_kept']['youden_threshold']:.4g}; "
        f"ONNX vs PyTorch max |Δp| {s['onnx']['max_abs_diff_vs_torch']:.2g}"
    )
    for w in s["warnings"]:
        logger.warning(f"WARNING: {w}")
    logger.info(f"wrote {cfg.out_dir}/model.onnx (+ .json), split.json, summary.json, training_curves.png")
    logger.info(
        f"next: lookalike ab --data {cfg.data} --split {cfg.out_dir}/split.json --models haar fer "
        f"{cfg.out_dir}/model.onnx"
    )


def add_commands(sub) -> None:
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
