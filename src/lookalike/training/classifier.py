"""Fine-tune a binary image classifier: a small head on frozen image features, done soundly.

The frozen encoder's features are computed once (with the embedding cache), so an epoch costs
milliseconds and early stopping can afford patience. Optionally the encoder's last block is unfrozen:
then the activations entering that block are computed once instead and the block trains with the head.
The split is stratified and by file (byte-identical files were collapsed when loading), the best
epoch by validation AUC or loss is kept, and the exported ONNX model (pixels → probability) is checked
against PyTorch before it is written as final.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lookalike.classify.data import LabelledImages, load_labelled, stratified_split, stratified_subsample, write_split
from lookalike.errors import LookalikeError
from lookalike.modelfile import save_atomic

if TYPE_CHECKING:
    from lookalike.encoders.efficientnet import EfficientNetLite0Encoder

logger = logging.getLogger(__name__)


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    out_dir: str = "runs/classifier"
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    train_limit: int | None = Field(None, ge=4, description="use only N training images (stratified)")
    val_limit: int | None = Field(None, ge=4, description="use only N validation images (stratified)")
    image_model: str = "efficientnet-lite0"
    # Linear-probe AUC on 3,000 faces: 128 px 0.916 (130 img/s), 160 px 0.926 (55 img/s), 224 px 0.932
    # (31 img/s), loaded 2-core machine; 160 keeps `lookalike ab` on 2,000 images well inside 2 minutes.
    image_size: tuple[int, int] = (160, 160)
    encoder_runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="torch skips the one-off ONNX export: quicker for a few hundred images"
    )
    # Smiles test split: unfrozen with 2,000 training images AUC 0.967 vs head-only 0.933 (same 2,000) and 0.948
    # (all 8,263), but ~20 min instead of ~3 on 2 busy cores (benchmarks/smiles.py --unfreeze-study).
    unfreeze_last_block: bool = False
    # Chosen on the smiles validation split (test untouched): one hidden layer of 256 beat a linear head.
    hidden: int = Field(256, ge=0, description="0: linear head on the features; >0: one hidden layer")
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    lr_schedule: Literal["cosine", "plateau", "none"] = "plateau"
    early_stopping: bool = True
    patience: int = Field(8, ge=1)
    monitor: Literal["val_auc", "val_loss"] = "val_auc"
    class_weighting: bool = True
    onnx_tolerance: float = Field(1e-4, gt=0, description="max |ONNX − PyTorch| probability on validation images")
    cache_dir: str | None = None


class Head(nn.Module):
    """Features → one logit: linear, or one hidden layer with dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)]
        else:
            layers += [nn.Linear(dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).squeeze(-1)


class _LastBlock(nn.Module):
    """EfficientNet's last MBConv block + head conv + pooling: the part that `unfreeze_last_block` trains."""

    def __init__(self, net):
        super().__init__()
        self.block, self.conv_head, self.bn1, self.swish = net._blocks[-1], net._conv_head, net._bn1, net._swish
        self.drop = net._global_params.drop_connect_rate * (len(net._blocks) - 1) / len(net._blocks)

    def forward(self, x):
        x = self.block(x, drop_connect_rate=self.drop)
        return self.swish(self.bn1(self.conv_head(x))).mean(dim=(2, 3))


class _Trunk(nn.Module):
    """uint8 NHWC pixels → the activations entering the last block (frozen)."""

    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled

    def forward(self, pixels):
        p, net = self.pooled, self.pooled.net
        x = pixels.permute(0, 3, 1, 2).float()
        x = nn.functional.interpolate(x, size=p.size, mode="bilinear", align_corners=False)
        x = net._swish(net._bn0(net._conv_stem((x - p.mean) / p.std)))
        n = len(net._blocks)
        for i, block in enumerate(net._blocks[:-1]):
            x = block(x, drop_connect_rate=net._global_params.drop_connect_rate * i / n)
        return x


class Exported(nn.Module):
    """What ships: uint8 NHWC pixels → P(positive)."""

    def __init__(self, features: nn.Module, head: Head):
        super().__init__()
        self.features, self.head = features, head

    def forward(self, pixels):
        return torch.sigmoid(self.head(self.features(pixels)))


def _encoder(cfg: FinetuneConfig) -> tuple[EfficientNetLite0Encoder, Path]:
    from lookalike.encoders.efficientnet import EfficientNetLite0Encoder, default_cache_dir
    from lookalike.encoders.registry import create_image_encoder

    if cfg.image_model != "efficientnet-lite0":
        raise LookalikeError(f"finetune-classifier supports image_model efficientnet-lite0, got {cfg.image_model!r}")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    enc = create_image_encoder(cfg.image_model, image_size=cfg.image_size, runtime=cfg.encoder_runtime, cache_dir=cache)
    if not isinstance(enc, EfficientNetLite0Encoder):  # the network's last block is fine-tuned: that class only
        raise LookalikeError(f"{cfg.image_model!r} is not the EfficientNet-Lite0 encoder")
    return enc, cache


def _features(cfg: FinetuneConfig, data: LabelledImages, progress: bool) -> tuple[np.ndarray, EfficientNetLite0Encoder]:
    """Pooled frozen features (cached on disk) or, with unfreeze_last_block, the last block's inputs."""
    from lookalike.catalogue.schema import ImageRef
    from lookalike.encoders.embedder import embed_images

    enc, cache = _encoder(cfg)
    if not cfg.unfreeze_last_block:
        res = embed_images([ImageRef(p) for p in data.paths], enc, cache, progress=progress)
        if res.failed:  # load_labelled decoded every file already; a failure here is a real fault
            raise LookalikeError(f"{len(res.failed)} images failed to embed, e.g. {data.paths[next(iter(res.failed))]}")
        return res.vectors, enc
    trunk = _Trunk(enc.model).eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(data), 64):
            batch = [enc.preprocess(_pil(a)) for a in data.images[s : s + 64]]
            out.append(trunk(torch.from_numpy(np.stack(batch))).numpy())
    return np.concatenate(out), enc


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def _predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[s : s + batch]) for s in range(0, len(x), batch)]).numpy()


def finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Train, keep the best epoch, export ONNX, write everything a rerun needs. Returns the summary."""
    from lookalike.classify import versions
    from lookalike.classify.onnx_export import export_onnx, ort_session
    from lookalike.classify.stats import youden_threshold
    from lookalike.provenance import provenance
    from lookalike.training.trainer import seed_everything

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    data = load_labelled(cfg.data)
    tr, va, te = stratified_split(data.labels, cfg.split, cfg.seed)
    if cfg.train_limit and cfg.train_limit < len(tr):
        tr = tr[stratified_subsample(data.labels[tr], cfg.train_limit, cfg.seed)]
    if cfg.val_limit and cfg.val_limit < len(va):
        va = va[stratified_subsample(data.labels[va], cfg.val_limit, cfg.seed)]
    for name, idx in (("train", tr), ("val", va)):
        if len(np.unique(data.labels[idx])) < 2:
            raise LookalikeError(f"the {name} split has only one class ({len(idx)} images); use more data")
    write_split(out / "split.json", data, {"train": tr, "val": va, "test": te}, cfg.seed)
    (out / "config.json").write_text(cfg.model_dump_json(indent=1))
    used = np.concatenate([tr, va])
    feats, enc = _features(cfg, data.subset(used), progress)
    xtr, xva = torch.from_numpy(feats[: len(tr)]), torch.from_numpy(feats[len(tr) :])
    ytr, yva = data.labels[tr].astype(np.float32), data.labels[va]
    t_feat = time.perf_counter() - t0

    trunk_tail = _LastBlock(copy.deepcopy(enc.model.net)) if cfg.unfreeze_last_block else None
    head = Head(enc.dim, cfg.hidden, cfg.dropout)
    model = nn.Sequential(trunk_tail, head) if trunk_tail is not None else head
    if trunk_tail is not None:
        for p in trunk_tail.parameters():
            p.requires_grad_(True)
    n_pos, n_neg = float(ytr.sum()), float(len(ytr) - ytr.sum())
    pos_weight = torch.tensor(n_neg / n_pos if cfg.class_weighting else 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    val_loss_fn = nn.BCEWithLogitsLoss()  # unweighted: comparable across runs and with test log-loss
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if cfg.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    elif cfg.lr_schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max" if cfg.monitor == "val_auc" else "min", factor=0.5, patience=max(1, cfg.patience // 3)
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    ytr_t = torch.from_numpy(ytr)
    threads = torch.get_num_threads()
    if trunk_tail is None:  # a 1280→1 head: thread hand-offs cost more than they save
        torch.set_num_threads(1)
    try:
        history, best_state = _fit(
            cfg, model, trunk_tail, opt, sched, loss_fn, val_loss_fn, xtr, ytr, ytr_t, xva, yva, gen, progress
        )
    finally:
        torch.set_num_threads(threads)
    best_epoch = max(h["epoch"] for h in history if h.get("best"))
    kept_epoch = best_epoch if cfg.early_stopping else history[-1]["epoch"]
    if cfg.early_stopping:
        model.load_state_dict(best_state)
    t_train = time.perf_counter() - t0 - t_feat

    # Export pixels → probability and check it against PyTorch on validation images.
    features = _ExportFeatures(enc.model, trunk_tail)
    exported = Exported(features, head).eval()
    val_pixels = np.stack([enc.preprocess(_pil(data.images[i])) for i in va[:64]])
    onnx_path = export_onnx(
        exported,
        torch.from_numpy(val_pixels[:2]),
        out / "model.onnx",
        "pixels",
        "probability",
        {0: "batch", 1: "height", 2: "width"},
    )
    with torch.inference_mode():
        p_torch = exported(torch.from_numpy(val_pixels)).numpy()
    p_onnx = ort_session(onnx_path).run(None, {"pixels": val_pixels})[0]
    onnx_diff = float(np.abs(p_torch - p_onnx).max())
    if onnx_diff > cfg.onnx_tolerance:
        onnx_path.unlink()
        raise LookalikeError(
            f"ONNX export disagrees with PyTorch by {onnx_diff:.2g} (> {cfg.onnx_tolerance}); model.onnx removed"
        )
    p_val = 1 / (1 + np.exp(-_predict(model, xva)))
    thr, j = youden_threshold(yva, p_val)
    last = history[-1]
    min_val = min(h["val_loss"] for h in history)
    warnings = []
    if not cfg.early_stopping and last["val_loss"] > 1.5 * min_val + 1e-3:
        warnings.append(
            f"overfitting: final val loss {last['val_loss']:.4f} is {last['val_loss'] / max(min_val, 1e-12):.1f}× "
            f"its minimum ({min_val:.4f}, epoch {min(history, key=lambda h: h['val_loss'])['epoch']}); "
            f"early stopping would have kept epoch {best_epoch}"
        )
    if last["train_loss_eval"] < 0.1 * last["val_loss"]:
        warnings.append(f"train loss {last['train_loss_eval']:.4f} ≪ val loss {last['val_loss']:.4f}: memorised")
    if len(tr) < 500:
        warnings.append(f"only {len(tr)} training images")
    summary = {
        "config": cfg.model_dump(),
        "provenance": {**provenance(), "classify_versions": versions()},
        "load_report": data.report.to_dict(),
        "n": {"train": len(tr), "val": len(va), "test_held_out": len(te)},
        "class_balance_train": {"positive": int(n_pos), "negative": int(n_neg)},
        "pos_weight": float(pos_weight),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "kept_epoch": kept_epoch,
        "val_at_kept": {"auc": _auc(yva, p_val), "youden_threshold": thr, "youden_j": j},
        "onnx": {"path": str(onnx_path), "max_abs_diff_vs_torch": onnx_diff, "checked_on": len(val_pixels)},
        "timings": {"features_s": t_feat, "train_s": t_train, "total_s": time.perf_counter() - t0},
        "warnings": warnings,
        "history": history,
    }
    sidecar = {
        "input": {"layout": "NHWC", "dtype": "uint8", "channels": 3, "size": None},
        "output": "probability",
        "encoder": enc.config(),
        "kept_epoch": kept_epoch,
        "train_sha1": [data.sha1[i] for i in tr],
        "val_sha1": [data.sha1[i] for i in va],
        "config": cfg.model_dump(),
    }
    (out / "model.onnx.json").write_text(json.dumps(sidecar))
    save_atomic(
        {
            "head": head.state_dict(),
            "last_block": trunk_tail.state_dict() if trunk_tail else None,
            "config": cfg.model_dump(),
        },
        out / "best.pt",
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    _charts(history, kept_epoch, out / "training_curves.png", f"{Path(cfg.data).name}: train {len(tr)}, val {len(va)}")
    return summary


def _fit(
    cfg: FinetuneConfig,
    model,
    trunk_tail,
    opt,
    sched,
    loss_fn,
    val_loss_fn,
    xtr,
    ytr,
    ytr_t,
    xva,
    yva,
    gen,
    progress: bool,
) -> tuple[list[dict], dict]:
    """The epoch loop: returns the history (best epochs marked) and the best state by the monitored metric."""
    history: list[dict] = []
    best, since = None, 0
    best_state: dict = {}  # set by the first epoch (there is at least one)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if trunk_tail is not None:  # BatchNorm statistics stay those of ImageNet: too few images to re-estimate
            for m in trunk_tail.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            loss = loss_fn(model(xtr[b]), ytr_t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        logits_tr, logits_va = _predict(model, xtr), _predict(model, xva)
        row = {
            "epoch": epoch,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": total / len(xtr),
            "train_loss_eval": float(val_loss_fn(torch.from_numpy(logits_tr), ytr_t)),
            "val_loss": float(val_loss_fn(torch.from_numpy(logits_va), torch.from_numpy(yva.astype(np.float32)))),
            "train_auc": _auc(ytr, logits_tr),
            "val_auc": _auc(yva, logits_va),
        }
        history.append(row)
        score = row["val_auc"] if cfg.monitor == "val_auc" else -row["val_loss"]
        if best is None or score > best + 1e-5:
            best, best_state, since = score, copy.deepcopy(model.state_dict()), 0
            row["best"] = True
        else:
            since += 1
        if progress:
            logger.info(
                f"  epoch {epoch:>3}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                f"val AUC {row['val_auc']:.4f}  lr {row['lr']:.2g}{'  *' if row.get('best') else ''}"
            )
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(row[cfg.monitor])
        elif sched is not None:
            sched.step()
        if cfg.early_stopping and since >= cfg.patience:
            break
    return history, best_state


class _ExportFeatures(nn.Module):
    """Frozen encoder up to pooled features, with the fine-tuned last block swapped in when there is one."""

    def __init__(self, pooled, tail: _LastBlock | None):
        super().__init__()
        self.pooled, self.trunk, self.tail = pooled, _Trunk(pooled) if tail is not None else None, tail

    def forward(self, pixels):
        return self.pooled(pixels) if self.tail is None else self.tail(self.trunk(pixels))


def _charts(history: list[dict], kept: int, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from lookalike.classify.report import save_figure  # sets the headless backend first

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for a, key, name in ((ax[0], "loss", "log-loss (unweighted)"), (ax[1], "auc", "ROC AUC")):
        a.plot(ep, [h[f"train_{key}" + ("_eval" if key == "loss" else "")] for h in history], label="train")
        a.plot(ep, [h[f"val_{key}"] for h in history], label="validation")
        a.set_title(name)
    ax[0].set_yscale("log")
    ax[2].plot(ep, [h["lr"] for h in history])
    ax[2].set(title="learning rate", yscale="log")
    for a in ax:
        a.axvline(kept, color="k", ls="--", lw=0.8, label=f"kept epoch {kept}")
        a.set_xlabel("epoch")
        a.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)
