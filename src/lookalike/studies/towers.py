"""Tower comparison: MLP vs coarse-to-fine, each with and without the stage-2 adapter, on the regular
test split and a zero-shot cold-start split, with per-query scores for paired significance tests.

Everything runs on the same prepared data (same frozen image space, split and vocabulary) per split;
only the tower differs. Per-query attribute nDCG@10 is what the core evaluator reports (whole test
gallery, all schema fields must match), so every mean here equals the `lookalike train` figure.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ttest_rel, wilcoxon

from lookalike.config import ColdStartConfig, RunConfig
from lookalike.evaluation.evaluate import validator
from lookalike.evaluation.evaluator import relevance_keys
from lookalike.model import LookalikeModel
from lookalike.pipeline import Prepared, new_model, prepare
from lookalike.provenance import provenance
from lookalike.retrieval.exact import exact_topk
from lookalike.towers.adapter import Adapter
from lookalike.training.adapter import AdapterConfig, fit_adapter, ndcg_per_query, save_adapter
from lookalike.training.trainer import train

logger = logging.getLogger(__name__)

TOWERS = ("mlp", "coarse-to-fine")


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """b − a on the same queries: mean difference, paired t-test and Wilcoxon signed-rank p-values."""
    diff = b - a
    out = {
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(diff.mean()),
        "n": len(diff),
        "b_better": int((diff > 0).sum()),
        "a_better": int((diff < 0).sum()),
    }
    if np.any(diff != 0):
        out["t_test_p"] = float(ttest_rel(b, a).pvalue)
        out["wilcoxon_p"] = float(wilcoxon(b, a).pvalue)
    else:
        out["t_test_p"] = out["wilcoxon_p"] = 1.0
    return out


def search_cost(queries: np.ndarray, gallery: np.ndarray, repeats: int = 3) -> dict:
    """Best-of-`repeats` wall time of exact top-100 search, and the gallery's float32 size."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        exact_topk(queries, gallery, 100)
        times.append(time.perf_counter() - t)
    return {"search_s": min(times), "gallery_mb": gallery.astype(np.float32).nbytes / 2**20, "dim": gallery.shape[1]}


def split_config(cfg: RunConfig, split: str, cold: ColdStartConfig) -> RunConfig:
    return cfg.model_copy(
        update={"split": cfg.split.model_copy(update={"cold_start": cold if split == "cold-start" else None})}
    )


def tower_config(cfg: RunConfig, tower: str) -> RunConfig:
    return cfg.model_copy(update={"tower": cfg.tower.model_copy(update={"name": tower})})


def _train_tower(cfg: RunConfig, prep: Prepared, out: Path, progress: bool) -> tuple[LookalikeModel, dict]:
    model = new_model(cfg, prep)
    t = time.perf_counter()
    history = train(
        model,
        prep.data,
        validator(prep.emb, prep.idx["val"], cfg),
        cfg.train,
        out / "checkpoints",
        progress=progress,
        checkpoint_extra={"schema": prep.emb.catalogue.schema.model_dump(mode="json")},
    )
    train_s = time.perf_counter() - t
    best, payload = LookalikeModel.load(out / "checkpoints" / "best_model.pt")
    return best, {
        "train_s": round(train_s, 1),
        "epochs_run": len(history),
        "best_epoch": payload["epoch"],
        "val_ndcg@10": payload["val_metric"],
        "s_per_epoch": round(train_s / max(1, len(history)), 1),
        "tower_params": sum(p.numel() for p in best.attribute_tower.parameters()),
    }


def compare_towers(
    cfg: RunConfig,
    out_dir: Path,
    adapter_cfg: AdapterConfig,
    cold: ColdStartConfig,
    towers: tuple[str, ...] = TOWERS,
    splits: tuple[str, ...] = ("regular", "cold-start"),
    progress: bool = False,
) -> dict:
    """Train every tower on every split, fit an adapter on each, evaluate on the split's test gallery.
    Writes results.json and per_query.npz under `out_dir`; returns the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        **provenance(),
        "config": cfg.model_dump(mode="json", by_alias=True),
        "adapter_config": adapter_cfg.model_dump(mode="json"),
        "cold_start": cold.model_dump(mode="json"),
        "splits": {},
    }
    per_query: dict[str, np.ndarray] = {}
    for split in splits:
        scfg = split_config(cfg, split, cold)
        prep = prepare(scfg, progress)
        emb, idx = prep.emb, prep.idx
        fields = scfg.eval.attribute_fields or emb.catalogue.schema.fields
        keys = relevance_keys(emb.products, fields)
        test = idx["test"]
        test_keys = np.unique(keys[test], return_inverse=True)[1]
        cat_field = emb.catalogue.schema.category_field
        categories = np.array([emb.products[i].value(cat_field) for i in test]) if cat_field else None
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        (out_dir / split / "split.json").write_text(
            json.dumps({"seed": scfg.split.seed, **prep.split}), encoding="utf-8"
        )
        block: dict = {"sizes": prep.sizes, "split_file": f"{split}/split.json", "towers": {}}
        if split == "cold-start":
            block["held_out"] = {
                "field": cold.field,
                "values": sorted({emb.products[i].value(cold.field) for i in test}),
            }
        for tower in towers:
            tcfg = tower_config(scfg, tower)
            tdir = out_dir / split / tower
            logger.info(f"[{split}] training the {tower} tower")
            model, info = _train_tower(tcfg, prep, tdir, progress)
            gallery = model.space.transform(emb.features[test])
            q_test = model.encode_attributes([emb.products[i].attributes for i in test])
            pq = ndcg_per_query(q_test, gallery, test_keys)
            per_query[f"{split}/{tower}"] = pq
            info["test_ndcg@10"] = float(pq.mean())
            if categories is not None:
                info["per_category"] = {
                    c: {"n": int((categories == c).sum()), "ndcg@10": float(pq[categories == c].mean())}
                    for c in sorted(set(categories.tolist()))
                }
            logger.info(f"[{split}] training the {adapter_cfg.out_dim}-d adapter on the {tower} tower")
            adapter, history, adapter_s = fit_adapter(model, prep, keys, adapter_cfg)
            save_adapter(adapter, adapter_cfg, tdir / "adapter.pt", history=history)
            im_train = prep.data.images.numpy()
            pca = Adapter(im_train.shape[1], adapter_cfg.out_dim).init_pca(im_train)
            q_small, g_small = adapter.encode(q_test), adapter.encode(gallery)
            pq_ad = ndcg_per_query(q_small, g_small, test_keys)
            pq_pca = ndcg_per_query(pca.encode(q_test), pca.encode(gallery), test_keys)
            per_query[f"{split}/{tower}+adapter"] = pq_ad
            info["adapter"] = {
                "test_ndcg@10": float(pq_ad.mean()),
                "pca_test_ndcg@10": float(pq_pca.mean()),
                "kept_of_full": float(pq_ad.mean() / max(pq.mean(), 1e-12)),
                "train_s": round(adapter_s, 1),
                "params": sum(p.numel() for p in adapter.parameters()),
                "history": history,
                "vs_full": paired_test(pq, pq_ad),
                "search_full": search_cost(q_test, gallery),
                "search_adapted": search_cost(q_small, g_small),
            }
            if categories is not None:
                for c in info["per_category"]:
                    info["per_category"][c]["adapter_ndcg@10"] = float(pq_ad[categories == c].mean())
            block["towers"][tower] = info
            logger.info(
                f"[{split}] {tower}: nDCG@10 {pq.mean():.4f}, with adapter {pq_ad.mean():.4f} (PCA {pq_pca.mean():.4f})"
            )
        if len(towers) == 2:
            a, b = towers
            block["significance"] = {
                f"{b} vs {a}": paired_test(per_query[f"{split}/{a}"], per_query[f"{split}/{b}"]),
                f"{b}+adapter vs {a}+adapter": paired_test(
                    per_query[f"{split}/{a}+adapter"], per_query[f"{split}/{b}+adapter"]
                ),
            }
        results["splits"][split] = block
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    # numpy's stub lets **per_query fill savez's allow_pickle: bool, so mypy refuses arrays there
    np.savez(out_dir / "per_query.npz", **per_query)  # type: ignore[arg-type]
    return results


def merge_results(dirs: list[Path]) -> dict:
    """Merge runs made in separate processes (e.g. one per split and tower, to use more cores) into one
    result, with the paired tests computed from their per-query scores."""
    merged: dict = {}
    per_query: dict[str, np.ndarray] = {}
    for d in dirs:
        r = json.loads((Path(d) / "results.json").read_text(encoding="utf-8"))
        with np.load(Path(d) / "per_query.npz") as z:
            per_query.update({k: z[k] for k in z.files})
        if not merged:
            merged = {**r, "splits": {}}
        for split, block in r["splits"].items():
            into = merged["splits"].setdefault(split, {**block, "towers": {}})
            into["towers"].update(block["towers"])
    for split, block in merged["splits"].items():
        names = [t for t in TOWERS if t in block["towers"]]
        block.pop("significance", None)
        if len(names) == 2:
            a, b = names
            block["significance"] = {
                f"{b} vs {a}": paired_test(per_query[f"{split}/{a}"], per_query[f"{split}/{b}"]),
                f"{b}+adapter vs {a}+adapter": paired_test(
                    per_query[f"{split}/{a}+adapter"], per_query[f"{split}/{b}+adapter"]
                ),
            }
    return merged


def adapter_ablation(
    cfg: RunConfig, checkpoint: Path, variants: dict[str, AdapterConfig], progress: bool = False
) -> dict:
    """Test nDCG@10 of adapters trained differently (sampler, mining, loss) on one trained tower."""
    model, _ = LookalikeModel.load(checkpoint)
    prep = prepare(cfg, progress)
    emb, test = prep.emb, prep.idx["test"]
    keys = relevance_keys(emb.products, cfg.eval.attribute_fields or emb.catalogue.schema.fields)
    test_keys = np.unique(keys[test], return_inverse=True)[1]
    gallery = model.space.transform(emb.features[test])
    q_test = model.encode_attributes([emb.products[i].attributes for i in test])
    full = ndcg_per_query(q_test, gallery, test_keys)
    pca = Adapter(gallery.shape[1], next(iter(variants.values())).out_dim).init_pca(prep.data.images.numpy())
    out: dict[str, Any] = {
        "model": str(checkpoint),
        "full_512_ndcg@10": float(full.mean()),
        "pca_ndcg@10": float(ndcg_per_query(pca.encode(q_test), pca.encode(gallery), test_keys).mean()),
        "variants": {},
    }
    for name, acfg in variants.items():
        logger.info(f"adapter variant {name}")
        adapter, history, secs = fit_adapter(model, prep, keys, acfg)
        save_adapter(adapter, acfg, Path(checkpoint).parent.parent / f"adapter-{name}.pt", history=history)
        q_small, g_small = adapter.encode(q_test), adapter.encode(gallery)
        pq = ndcg_per_query(q_small, g_small, test_keys)
        out["variants"][name] = {
            "test_ndcg@10": float(pq.mean()),
            "kept_of_full": float(pq.mean() / max(full.mean(), 1e-12)),
            "train_s": round(secs, 1),
            "history": history,
            "config": acfg.model_dump(mode="json"),
            "vs_full": paired_test(full, pq),
            "search_full": search_cost(q_test, gallery),
            "search_adapted": search_cost(q_small, g_small),
        }
        np.save(Path(checkpoint).parent.parent / f"adapter-{name}-per_query.npy", pq)
    return out
