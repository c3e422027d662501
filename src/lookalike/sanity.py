"""`lookalike sanity-check`: train on a synthetic catalogue and verify the mechanics end to end.

Each check is a named boolean with the figures behind it; the run passes only if all hold.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from lookalike.catalogue.synthetic import synthetic_catalogue
from lookalike.config import RunConfig
from lookalike.evaluation.evaluator import relevance_keys
from lookalike.losses import InfoNCELoss
from lookalike.pipeline import embed_catalogue, image_encoder, log, new_model, Prepared
from lookalike.provenance import provenance
from lookalike.towers.vocab import UNK, AttributeVocab
from lookalike.training.trainer import TrainSet, seed_everything, train
from lookalike.encoders.projection import ImageSpace
from lookalike.catalogue.split import split_ids


def sanity_check(out_file: Path = Path("temp_logs/sanity_check_results.json"), n: int = 600, epochs: int = 8,
                 cache_dir: str | None = None, progress: bool = False) -> dict:
    cfg = RunConfig.model_validate({"out_dir": tempfile.mkdtemp(prefix="lookalike-sanity-"),
                                    "encoder": {"projection": "pca", "projection_dim": 64, "cache_dir": cache_dir},
                                    "train": {"epochs": epochs, "batch_size": 64, "patience": epochs, "lr": 2e-3}})
    seed_everything(cfg.train.seed)
    cat = synthetic_catalogue(n)
    emb = embed_catalogue(cat, cfg, progress)
    split = split_ids(emb.catalogue, 0.15, 0.15, 0)
    pos = {p.id: i for i, p in enumerate(emb.products)}
    idx = {k: np.array([pos[i] for i in v]) for k, v in split.items()}
    schema = cat.schema
    space = ImageSpace("pca", 64).fit(emb.features[idx["train"]])
    images = space.transform(emb.features)
    vocab = AttributeVocab.build([p.attributes for p in emb.products], schema.single_fields, schema.list_fields)
    groups = relevance_keys(emb.products, schema.fields)
    tr = idx["train"]
    data = TrainSet(vocab.encode([emb.products[i].attributes for i in tr]), torch.from_numpy(images[tr]),
                    torch.from_numpy(groups[tr]), torch.from_numpy(emb.sentences[tr]))
    prep = Prepared(emb, split, idx, space, vocab, data)
    model = new_model(cfg, prep)
    checks: dict[str, dict] = {}

    def check(name: str, ok: bool, **figures) -> None:
        checks[name] = {"pass": bool(ok), **figures}
        log(f"  [{'PASS' if ok else 'FAIL'}] {name} {json.dumps(figures, default=float)}")

    # Loss and gradients before training, on one batch.
    loss_fn = InfoNCELoss(cfg.train.temperature)
    batch = {f: v[:64] for f, v in data.attributes.items()}
    model.train()
    q = model.attribute_tower(batch)
    loss0 = loss_fn(q, data.images[:64], data.groups[:64])
    loss0.backward()
    no_grad = [n for n, p in model.attribute_tower.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    used_rows_grad = all(float(model.attribute_tower.embeddings[f].weight.grad.abs().sum()) > 0 for f in vocab.fields)
    check("gradients reach every tower parameter", not no_grad and used_rows_grad, missing=no_grad)
    enc = image_encoder(cfg)
    frozen = all(not p.requires_grad and p.grad is None for m in enc.torch_modules() for p in m.parameters())
    check("image encoder is frozen (no requires_grad, no grad)", frozen)
    model.zero_grad(set_to_none=True)

    from lookalike.evaluation.evaluator import RetrievalEvaluator

    val = RetrievalEvaluator([emb.products[i] for i in idx["val"]], {"attribute": schema.fields}, [1, 5, 10])

    def validate(m):
        g = space.transform(emb.features[idx["val"]])
        return val({"json_to_image": m.encode_attributes([emb.products[i].attributes for i in idx["val"]])}, g,
                   per_category=False)

    history = train(model, data, validate, cfg.train, Path(cfg.out_dir) / "checkpoints", progress=progress)
    first, last = history[0]["loss"], history[-1]["loss"]
    check("loss decreases", last < 0.8 * first, first_epoch_loss=first, last_epoch_loss=last)
    check("validation metric rises above chance", history[-1]["val_metric"] > 0.3,
          val_ndcg10=history[-1]["val_metric"])

    model.eval()
    attrs = [emb.products[i].attributes for i in idx["test"]]
    out = model.encode_attributes(attrs)
    check("output dimension equals the image space", out.shape[1] == images.shape[1], dim=out.shape[1])
    norms = np.linalg.norm(out, axis=1)
    check("outputs have unit L2 norm", np.allclose(norms, 1, atol=1e-5), min=float(norms.min()), max=float(norms.max()))
    single = np.stack([model.encode_attributes([a])[0] for a in attrs[:16]])
    check("batch consistency (alone vs in a batch)", np.allclose(single, out[:16], atol=1e-5),
          max_abs_diff=float(np.abs(single - out[:16]).max()))

    base = dict(attrs[0])
    per_field = {}
    for f in schema.single_fields:
        other = next(v for v in vocab.values[f] if v != base[f])
        per_field[f] = float(1 - model.encode_attributes([base, {**base, f: other}]).prod(axis=0).sum())
    mats = base["material"]
    perm_same = np.allclose(*model.encode_attributes([base, {**base, "material": list(reversed(mats))}]), atol=1e-6)
    per_field["material"] = float(1 - model.encode_attributes([base, {**base, "material": ["denim", "knit", "leather", "lace"]}]).prod(axis=0).sum())
    check("every field changes the output; list pooling ignores order", all(v > 1e-4 for v in per_field.values()) and perm_same,
          cosine_distance_when_changed=per_field)
    unknown = model.encode_attributes([{**base, "colour": "ultraviolet"}])
    enc_unknown = vocab.encode([{**base, "colour": "ultraviolet"}])["colour"]
    check("unknown value maps to the UNK embedding", int(enc_unknown[0, 0]) == UNK and np.isfinite(unknown).all())

    ok = all(c["pass"] for c in checks.values())
    result = {**provenance(), "status": "PASS" if ok else "FAIL", "checks": checks, "history": history,
              "catalogue": emb.catalogue.report.to_dict()}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2, default=float))
    log(f"SANITY CHECK {'PASS' if ok else 'FAIL'} ({sum(c['pass'] for c in checks.values())}/{len(checks)} checks) → {out_file}")
    return result
