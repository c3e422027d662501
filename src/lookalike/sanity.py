"""`lookalike sanity-check`: train on a synthetic catalogue and verify the mechanics end to end.

Each check is a named boolean with the figures behind it; the run passes only if all hold.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from lookalike.config import RunConfig
from lookalike.encoders.embedding import image_encoder
from lookalike.evaluation.evaluate import validator
from lookalike.losses import InfoNCELoss
from lookalike.pipeline import new_model, prepare
from lookalike.provenance import provenance
from lookalike.towers.vocab import UNK
from lookalike.training.trainer import seed_everything, train

logger = logging.getLogger(__name__)


def sanity_check(
    out_file: Path = Path("temp_logs/sanity_check_results.json"),
    n: int = 600,
    epochs: int = 8,
    cache_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    progress: bool = False,
) -> dict:
    """Train on `n` synthetic products and check the mechanics; the checkpoints go to a temporary folder,
    removed at the end whatever happens, and the results to `out_file`."""
    with tempfile.TemporaryDirectory(prefix="lookalike-sanity-") as work:
        return _sanity_check(Path(work), Path(out_file), n, epochs, cache_dir, image_size, progress)


def _grad_mass(p: torch.Tensor) -> float:
    """Sum of |gradient| over a parameter; 0 when no gradient reached it."""
    return 0.0 if p.grad is None else float(p.grad.abs().sum())


def _sanity_check(
    work: Path,
    out_file: Path,
    n: int,
    epochs: int,
    cache_dir: str | None,
    image_size: tuple[int, int] | None,
    progress: bool,
) -> dict:
    encoder = {"projection": "pca", "projection_dim": 64, "cache_dir": cache_dir}
    if image_size:  # a smaller input makes a quick smoke run (the synthetic shapes survive it)
        encoder["image_size"] = list(image_size)
    cfg = RunConfig.model_validate(
        {
            "out_dir": str(work),
            "data": {"catalog": f"synthetic:{n}"},
            "encoder": encoder,
            "train": {"epochs": epochs, "batch_size": 64, "patience": epochs, "lr": 2e-3},
        }
    )
    seed_everything(cfg.train.seed)
    prep = prepare(cfg, progress)
    emb, idx, vocab, data = prep.emb, prep.idx, prep.vocab, prep.data
    schema = emb.catalogue.schema
    images = prep.space.transform(emb.features)
    model = new_model(cfg, prep)
    checks: dict[str, dict] = {}

    def check(name: str, ok: bool, **figures) -> None:
        checks[name] = {"pass": bool(ok), **figures}
        logger.info(f"  [{'PASS' if ok else 'FAIL'}] {name} {json.dumps(figures, default=float)}")

    # Loss and gradients before training, on one batch.
    loss_fn = InfoNCELoss(cfg.train.temperature)
    batch = {f: v[:64] for f, v in data.attributes.items()}
    model.train()
    q = model.attribute_tower(batch)
    loss0 = loss_fn(q, data.images[:64], data.groups[:64])
    loss0.backward()
    no_grad = [
        n for n, p in model.attribute_tower.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    params = dict(model.attribute_tower.named_parameters())
    used_rows_grad = all(_grad_mass(params[f"embeddings.{f}.weight"]) > 0 for f in vocab.fields)
    check("gradients reach every tower parameter", not no_grad and used_rows_grad, missing=no_grad)
    enc = image_encoder(cfg)
    frozen = all(not p.requires_grad and p.grad is None for m in enc.torch_modules() for p in m.parameters())
    check("image encoder is frozen (no requires_grad, no grad)", frozen)
    model.zero_grad(set_to_none=True)

    history = train(
        model, data, validator(emb, idx["val"], cfg), cfg.train, Path(cfg.out_dir) / "checkpoints", progress=progress
    )
    first, last = history[0]["loss"], history[-1]["loss"]
    check("loss decreases", last < 0.8 * first, first_epoch_loss=first, last_epoch_loss=last)
    check("validation metric rises above chance", history[-1]["val_metric"] > 0.3, val_ndcg10=history[-1]["val_metric"])

    model.eval()
    attrs = [emb.products[i].attributes for i in idx["test"]]
    out = model.encode_attributes(attrs)
    check("output dimension equals the image space", out.shape[1] == images.shape[1], dim=out.shape[1])
    norms = np.linalg.norm(out, axis=1)
    check("outputs have unit L2 norm", np.allclose(norms, 1, atol=1e-5), min=float(norms.min()), max=float(norms.max()))
    single = np.stack([model.encode_attributes([a])[0] for a in attrs[:16]])
    check(
        "batch consistency (alone vs in a batch)",
        np.allclose(single, out[:16], atol=1e-5),
        max_abs_diff=float(np.abs(single - out[:16]).max()),
    )

    base = dict(attrs[0])
    per_field = {}
    for f in schema.single_fields:
        other = next(v for v in vocab.values[f] if v != base[f])
        per_field[f] = float(1 - model.encode_attributes([base, {**base, f: other}]).prod(axis=0).sum())
    mats = base["material"]
    as_given, reversed_ = model.encode_attributes([base, {**base, "material": list(reversed(mats))}])
    perm_same = np.allclose(as_given, reversed_, atol=1e-6)
    per_field["material"] = float(
        1
        - model.encode_attributes([base, {**base, "material": ["denim", "knit", "leather", "lace"]}]).prod(axis=0).sum()
    )
    check(
        "every field changes the output; list pooling ignores order",
        all(v > 1e-4 for v in per_field.values()) and perm_same,
        cosine_distance_when_changed=per_field,
    )
    unknown = model.encode_attributes([{**base, "colour": "ultraviolet"}])
    enc_unknown = vocab.encode([{**base, "colour": "ultraviolet"}])["colour"]
    check("unknown value maps to the UNK embedding", int(enc_unknown[0, 0]) == UNK and np.isfinite(unknown).all())

    ok = all(c["pass"] for c in checks.values())
    result = {
        **provenance(),
        "status": "PASS" if ok else "FAIL",
        "checks": checks,
        "history": history,
        "catalogue": emb.catalogue.report.to_dict(),
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2, default=float))
    result["summary"] = (
        f"SANITY CHECK {'PASS' if ok else 'FAIL'} ({sum(c['pass'] for c in checks.values())}/"
        f"{len(checks)} checks) → {out_file}"
    )
    return result
