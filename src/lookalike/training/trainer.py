"""The InfoNCE training loop: AdamW, warm-up + cosine, clipping, early stopping on a validation
retrieval metric over the whole validation gallery, best/last checkpoints and exact resume; on any torch
device, in fp32 or mixed precision (bf16, or fp16 with a gradient scaler)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lookalike.config import TrainConfig
from lookalike.devices import autocast, resolve_device
from lookalike.errors import LookalikeError
from lookalike.evaluation.evaluator import get_metric
from lookalike.losses import InfoNCELoss
from lookalike.model import LookalikeModel
from lookalike.modelfile import save_atomic
from lookalike.training.relatedness import relatedness, value_information

logger = logging.getLogger(__name__)


@dataclass
class TrainSet:
    attributes: dict[str, torch.Tensor]
    images: torch.Tensor  # (N, D) unit vectors in the frozen image space
    groups: torch.Tensor  # (N,) equal for identical attribute values
    sentences: torch.Tensor | None = None  # (N, text_dim) frozen sentence vectors
    category: str | None = None  # the single-valued field whose shared value adds to soft-target relatedness
    # Training-time augmentation (training/augment.py): (batch attributes, images, rows, generator) → (tower
    # inputs, image targets); relatedness is still computed on the products' own attributes.
    augment: Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: torch.Tensor, device: torch.device) -> TrainSet:
        """Rows `idx`, on `device` (the whole set stays where it is: only a batch moves)."""
        return TrainSet(
            {f: v[idx].to(device) for f, v in self.attributes.items()},
            self.images[idx].to(device),
            self.groups[idx].to(device),
            None if self.sentences is None else self.sentences[idx].to(device),
            self.category,
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(scheduler: str, step: int, warmup: int, total: int) -> float:
    """The learning rate's multiplier at `step`: a linear warm-up, then `scheduler` (see TrainConfig.scheduler)."""
    if scheduler == "cosine" or step < warmup:
        return warmup_cosine(step, warmup, total)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if scheduler == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if scheduler == "exponential":
        return 0.01**progress
    return 1.0


def train(
    model: LookalikeModel,
    data: TrainSet,
    validate: Callable[[LookalikeModel], dict],
    cfg: TrainConfig,
    checkpoint_dir: Path,
    resume: bool = False,
    progress: bool = True,
    checkpoint_extra: dict | None = None,
    val_data: TrainSet | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Returns the per-epoch history; `checkpoint_dir` receives best_model.pt and last.pt. With `val_data`
    each epoch also reports the InfoNCE loss on it (`val_loss`); `on_epoch` receives each history row once
    last.pt holds it (tracking writes it to TensorBoard and MLflow; a tuner's pruner raises there to stop a
    trial)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # The image side is frozen: its vectors are constants here, never parameters.
    assert not data.images.requires_grad, "image embeddings must not require gradients"
    seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(
            model, data, validate, cfg, checkpoint_dir, resume, progress, checkpoint_extra, val_data, on_epoch
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    model: LookalikeModel,
    data: TrainSet,
    validate: Callable[[LookalikeModel], dict],
    cfg: TrainConfig,
    checkpoint_dir: Path,
    resume: bool,
    progress: bool,
    checkpoint_extra: dict | None,
    val_data: TrainSet | None,
    on_epoch: Callable[[dict], None] | None,
) -> list[dict]:
    device = resolve_device(cfg.device)
    losses = torch.nn.ModuleDict(
        {
            "attribute": InfoNCELoss(cfg.temperature, cfg.learnable_temperature, cfg.positives, soft=cfg.soft_targets),
            "text": InfoNCELoss(cfg.temperature, cfg.learnable_temperature, cfg.positives, soft=cfg.soft_targets),
        }
    )
    model.to(device)
    losses.to(device)
    params = [*model.parameters(), *losses.parameters()]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.scheduler, s, warmup, total))
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best, best_epoch, start_epoch = -math.inf, -1, 0
    last = checkpoint_dir / "last.pt"
    if resume and last.exists():
        try:  # plain tensors, dicts, lists, numbers and strings: nothing in the file can run code
            state = torch.load(last, map_location="cpu", weights_only=True)
        except Exception as e:  # a foreign or tampered file, or one torch cannot read
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LookalikeError(f"cannot resume from {last}: {first}") from None
        model.load_state_dict(state["state_dict"])
        losses.load_state_dict(state["losses"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        history, best, best_epoch, start_epoch = (
            state["history"],
            state["best"],
            state["best_epoch"],
            state["epoch"] + 1,
        )
    sentences = data.sentences if cfg.train_text else None  # the text tower trains when there are sentences
    information = value_information(data.attributes, model.vocab) if cfg.soft_targets else {}
    information = {f: v.to(device) for f, v in information.items()}

    def step_losses(
        b: TrainSet, sentences: torch.Tensor | None, inputs: dict | None = None, images: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attribute tower's and (with sentences) the text tower's InfoNCE on one batch (`inputs` and
        `images`: augmented tower inputs and targets); the towers run under autocast, the loss in fp32."""
        related = (
            relatedness(b.attributes, information, b.category, cfg.soft_category_weight) ** cfg.soft_sharpness
            if cfg.soft_targets
            else None
        )
        targets = b.images if images is None else images
        with autocast(device, cfg.precision):
            q = model.attribute_tower(b.attributes if inputs is None else inputs)
            t = model.text_tower(sentences) if sentences is not None else None
        attr = losses["attribute"](q.float(), targets, b.groups, related)
        text = losses["text"](t.float(), targets, b.groups, related) if t is not None else None
        return attr, text

    @torch.no_grad()
    def validation_loss() -> float | None:
        """The attribute InfoNCE on the validation split, in fixed batches of the training size."""
        if val_data is None or len(val_data) < 2:
            return None
        total, n = 0.0, 0
        for s in range(0, len(val_data), cfg.batch_size):
            idx = torch.arange(s, min(s + cfg.batch_size, len(val_data)))
            if len(idx) < 2:
                break
            attr, _ = step_losses(val_data.batch(idx, device), None)
            total, n = total + attr.item() * len(idx), n + len(idx)
        return total / n

    t0 = time.perf_counter()
    stale = start_epoch - 1 - best_epoch if history else 0
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        model.train()
        order = torch.randperm(len(data), generator=gen)
        sums = {"loss": 0.0, "attribute_loss": 0.0, "text_loss": 0.0, "grad_norm": 0.0}
        skipped = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            b = data.batch(idx, device)
            inputs, images = data.augment(b.attributes, b.images, idx, gen) if data.augment else (None, None)
            attr_loss, text_loss = step_losses(
                b, sentences[idx].to(device) if sentences is not None else None, inputs, images
            )
            loss = attr_loss
            if text_loss is not None:
                loss = loss + text_loss
                sums["text_loss"] += text_loss.item()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # clip the true gradients (a no-op unless fp16)
            norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            if math.isfinite(norm):
                sums["grad_norm"] += norm
            else:  # fp16 overflow: the scaler skips this step and lowers its scale
                skipped += 1
            scaler.step(opt)
            scaler.update()
            sched.step()
            sums["loss"] += loss.item()
            sums["attribute_loss"] += attr_loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        model.eval()
        results = validate(model)
        metric = get_metric(results, cfg.val_metric)
        val_loss = validation_loss()
        sim = results.get("json_to_image", {}).get("similarity", {})
        row = {
            "epoch": epoch + 1,
            **{k: v / steps_per_epoch for k, v in sums.items() if k != "grad_norm"},
            # mean norm before clipping, over the steps taken (fp16 skips those whose gradients overflowed)
            "grad_norm": sums["grad_norm"] / max(1, steps_per_epoch - skipped),
            "skipped_steps": skipped,
            "val_metric": metric,
            "val_metric_name": cfg.val_metric,
            "val_loss": val_loss,
            "val_metrics": {
                f"{name}/{m}": float(v)
                for name, block in results.get("json_to_image", {}).items()
                if isinstance(block, dict) and isinstance(block.get("all"), dict)
                for m, v in block["all"].items()
                if isinstance(v, int | float)
            },
            "lr": sched.get_last_lr()[0],
            "temperature": losses["attribute"].temperature,
            "text_temperature": losses["text"].temperature,
            "positive_similarity": sim.get("positive_mean"),
            "negative_similarity": sim.get("negative_mean"),
            "elapsed_s": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        improved = metric > best
        if improved:
            best, best_epoch = metric, epoch
            model.save(
                checkpoint_dir / "best_model.pt",
                epoch=epoch + 1,
                val_metric=metric,
                temperature=row["temperature"],
                **(checkpoint_extra or {}),
            )
        stale = epoch - best_epoch
        save_atomic(
            {
                "state_dict": model.state_dict(),
                "losses": losses.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                "best_epoch": best_epoch,
                "epoch": epoch,
            },
            last,
        )
        val = f"  val loss {val_loss:.4f}" if val_loss is not None else ""
        msg = (
            f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {row['loss']:.4f}{val}  {cfg.val_metric} {metric:.4f}"
            f"{' *' if improved else '  '}  t={row['temperature']:.3f}  {row['elapsed_s']:.0f}s"
        )
        logger.info(msg)
        if on_epoch is not None:
            on_epoch(row)
    return history
