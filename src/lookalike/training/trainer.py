"""The InfoNCE training loop: AdamW, warm-up + cosine, clipping, early stopping on a validation
retrieval metric over the whole validation gallery, best/last checkpoints and exact resume."""

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
from lookalike.errors import LookalikeError
from lookalike.evaluation.evaluator import get_metric
from lookalike.losses import InfoNCELoss
from lookalike.model import LookalikeModel, save_atomic
from lookalike.training.relatedness import relatedness, value_information

logger = logging.getLogger(__name__)


@dataclass
class TrainSet:
    attributes: dict[str, torch.Tensor]
    images: torch.Tensor  # (N, D) unit vectors in the frozen image space
    groups: torch.Tensor  # (N,) equal for identical attribute values
    sentences: torch.Tensor | None = None  # (N, text_dim) frozen sentence vectors
    category: str | None = None  # the single-valued field whose shared value adds to soft-target relatedness

    def __len__(self) -> int:
        return len(self.images)


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
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Returns the per-epoch history; `checkpoint_dir` receives best_model.pt and last.pt. `on_epoch` gets each
    epoch's history row once last.pt holds it (a tuner's pruner raises there to stop a trial)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # The image side is frozen: its vectors are constants here, never parameters.
    assert not data.images.requires_grad, "image embeddings must not require gradients"
    seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(model, data, validate, cfg, checkpoint_dir, resume, progress, checkpoint_extra, on_epoch)
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
    on_epoch: Callable[[dict], None] | None,
) -> list[dict]:
    losses = torch.nn.ModuleDict(
        {
            "attribute": InfoNCELoss(cfg.temperature, cfg.learnable_temperature, cfg.positives, soft=cfg.soft_targets),
            "text": InfoNCELoss(cfg.temperature, cfg.learnable_temperature, cfg.positives, soft=cfg.soft_targets),
        }
    )
    params = [*model.parameters(), *losses.parameters()]
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
        torch.set_rng_state(state["torch_rng"])
        history, best, best_epoch, start_epoch = (
            state["history"],
            state["best"],
            state["best_epoch"],
            state["epoch"] + 1,
        )
    sentences = data.sentences if cfg.train_text else None  # the text tower trains when there are sentences
    information = value_information(data.attributes, model.vocab) if cfg.soft_targets else {}
    t0 = time.perf_counter()
    stale = start_epoch - 1 - best_epoch if history else 0
    for epoch in range(start_epoch, cfg.epochs):
        if stale >= cfg.patience:
            break
        model.train()
        order = torch.randperm(len(data), generator=gen)
        sums = {"loss": 0.0, "attribute_loss": 0.0, "text_loss": 0.0}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            images, groups = data.images[idx], data.groups[idx]
            batch = {f: v[idx] for f, v in data.attributes.items()}
            related = (
                relatedness(batch, information, data.category, cfg.soft_category_weight) ** cfg.soft_sharpness
                if cfg.soft_targets
                else None
            )
            q = model.attribute_tower(batch)
            attr_loss = losses["attribute"](q, images, groups, related)
            loss = attr_loss
            if sentences is not None:
                text_loss = losses["text"](model.text_tower(sentences[idx]), images, groups, related)
                loss = loss + text_loss
                sums["text_loss"] += text_loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            sums["loss"] += loss.item()
            sums["attribute_loss"] += attr_loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        model.eval()
        results = validate(model)
        metric = get_metric(results, cfg.val_metric)
        sim = results.get("json_to_image", {}).get("similarity", {})
        row = {
            "epoch": epoch + 1,
            **{k: v / steps_per_epoch for k, v in sums.items()},
            "val_metric": metric,
            "val_metric_name": cfg.val_metric,
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
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                "best_epoch": best_epoch,
                "epoch": epoch,
            },
            last,
        )
        msg = (
            f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {row['loss']:.4f}  {cfg.val_metric} {metric:.4f}"
            f"{' *' if improved else '  '}  t={row['temperature']:.3f}  {row['elapsed_s']:.0f}s"
        )
        logger.info(msg)
        if on_epoch is not None:
            on_epoch(row)
    return history
