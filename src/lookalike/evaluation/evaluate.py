"""Evaluating a trained model on a split or a whole catalogue: every product a query, all of them the gallery.

The main job evaluates its test split here, `lookalike evaluate` any catalogue of the same schema, and
training validates with `validator` on the validation split; all rank through the same exact search.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from lookalike.catalogue import CatalogueSchema
from lookalike.config import RunConfig
from lookalike.encoders.embedding import Embedded
from lookalike.errors import LookalikeError
from lookalike.evaluation.centrality import anchor_mask, centrality_scores
from lookalike.evaluation.evaluator import RetrievalEvaluator, get_metric
from lookalike.model import LookalikeModel, load_for_checkpoint
from lookalike.provenance import provenance

BIASED_TASKS = ("json_to_image", "text_to_image")  # the hubness correction's bank holds training JSON queries


def eval_definitions(cfg: RunConfig, schema: CatalogueSchema, instance: bool = True) -> dict[str, list[str] | None]:
    fields = cfg.eval.attribute_fields or schema.fields
    unknown = [
        f for f in [*fields, *(f for fs in cfg.eval.extra_relevance.values() for f in fs)] if f not in schema.fields
    ]
    if unknown:
        raise LookalikeError(f"relevance fields not in the catalogue schema: {unknown}; fields are {schema.fields}")
    defs: dict[str, list[str] | None] = {"instance": None} if instance else {}
    defs["attribute"] = list(fields)
    defs.update({f"attribute:{name}": list(fs) for name, fs in cfg.eval.extra_relevance.items()})
    return defs


def query_vectors(model: LookalikeModel, emb: Embedded, idx: np.ndarray, gallery: np.ndarray) -> dict[str, np.ndarray]:
    products = [emb.products[i] for i in idx]
    queries = {"json_to_image": model.encode_attributes([p.attributes for p in products])}
    if emb.sentences is not None:
        queries["text_to_image"] = model.encode_sentence_vectors(emb.sentences[idx])
    queries["image_to_image"] = gallery
    return queries


def ranked_gallery(model: LookalikeModel, emb: Embedded, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Products `idx` as a gallery: their image vectors and the hubness offsets JSON and text queries rank with."""
    gallery = model.space.transform(emb.features[idx])
    return gallery, model.gallery_bias(gallery)


def evaluate_split(
    model: LookalikeModel,
    emb: Embedded,
    idx: np.ndarray,
    cfg: RunConfig,
    out_dir: Path | None,
    per_category: bool = True,
    ranked: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> dict:
    """Whole-gallery evaluation of products `idx`: each is a query, all of them the gallery.
    `ranked`: `ranked_gallery` of the same products, when the caller already has it."""
    products = [emb.products[i] for i in idx]
    gallery, bias = ranked or ranked_gallery(model, emb, idx)
    central = centrality_scores(emb.features[idx])
    anchors = anchor_mask(central, cfg.eval.anchor_fraction)
    evaluator = RetrievalEvaluator(
        products,
        eval_definitions(cfg, emb.catalogue.schema),
        cfg.eval.ks,
        cfg.eval.run_depth,
        anchors,
        emb.catalogue.schema.category_field,
    )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    queries = query_vectors(model, emb, idx, gallery)
    biases = {}
    if bias is not None:  # ranked with the hubness correction; the plain-cosine ranking is reported beside it
        for task in [t for t in queries if t in BIASED_TASKS]:
            queries[f"{task}_cosine"] = queries[task]
            biases[task] = bias
    results = evaluator(queries, gallery, out_dir, per_category=per_category, biases=biases)
    results["ranking"] = {
        "hubness_weight": model.config.retrieval.hubness_weight if bias is not None else 0.0,
        "hubness_k": model.config.retrieval.hubness_k,
        "corrected_tasks": sorted(biases),
        "note": "TASK_cosine: the same queries ranked by plain cosine",
    }
    results["relevance_definitions"] = evaluator.definitions
    results["anchor_fraction"] = cfg.eval.anchor_fraction
    results["metric_depth_note"] = (
        f"MRR and MAP are computed on the top-{cfg.eval.run_depth} run (as trec_eval "
        "on the exported run); recall denominators count the whole gallery."
    )
    return results


def validator(emb: Embedded, idx: np.ndarray, cfg: RunConfig):
    products = [emb.products[i] for i in idx]
    defs = eval_definitions(cfg, emb.catalogue.schema, instance=False)
    evaluator = RetrievalEvaluator(products, defs, cfg.eval.ks, cfg.eval.run_depth)

    gallery = None

    def validate(model: LookalikeModel) -> dict:
        """JSON → image on the whole validation gallery (the early-stopping metric's task, nothing more); with
        `train.val_corrected`, ranked with the hubness offsets of the model as it is now, its bank being the
        training queries (`model.query_bank`), as the test split and `search` rank."""
        nonlocal gallery
        if gallery is None:  # the image space is frozen: embed the gallery once
            gallery = model.space.transform(emb.features[idx])
        q = {"json_to_image": model.encode_attributes([p.attributes for p in products])}
        bias = model.gallery_bias(gallery) if cfg.train.val_corrected else None
        return evaluator(q, gallery, per_category=False, biases={"json_to_image": bias} if bias is not None else None)

    return validate


def headline(evaluation: dict) -> dict[str, float]:
    """The few figures worth printing: test-split hit@10 / precision@10 / nDCG@10 / MRR per task."""
    out = {}
    for task in ("json_to_image", "text_to_image", "image_to_image"):
        if task not in evaluation:
            continue
        for name in evaluation[task]:
            block = evaluation[task][name]
            if isinstance(block, dict) and "all" in block:
                for m in ("hit@10", "precision@10", "ndcg@10", "mrr"):
                    out[f"{task}/{name}/{m}"] = round(get_metric(evaluation, f"{task}/{name}/{m}"), 4)
                if "anchor" in block:
                    out[f"{task}/{name}/anchor/hit@10"] = round(block["anchor"]["hit@10"], 4)
    return out


def evaluate_checkpoint(
    checkpoint: str,
    catalog: str,
    out_dir: str,
    schema: CatalogueSchema | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict:
    """Evaluate a trained model on any catalogue of the same schema, every product as query and gallery;
    `device`: where the encoders and towers run (auto, cpu, cuda[:N], mps)."""
    model, payload = LookalikeModel.load(checkpoint)
    if device is not None:
        from lookalike.devices import resolve_device

        model.to(resolve_device(device))
    emb, cfg = load_for_checkpoint(model, payload, catalog, schema, cache_dir, progress, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    evaluation = evaluate_split(model, emb, np.arange(len(emb.products)), cfg, out)
    evaluation.update(
        {
            **provenance(),
            "checkpoint": str(checkpoint),
            "catalog": str(catalog),
            "catalogue": emb.catalogue.report.to_dict(),
            "timings": {**emb.timings, "evaluation_s": round(time.perf_counter() - t, 2)},
            "headline": headline(evaluation),
        }
    )
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False), encoding="utf-8")
    return evaluation
