"""The main job: load → embed (frozen) → split → train → evaluate → artifacts.

Only the orchestration lives here; each stage is a library module (catalogue, encoders.embedding, towers,
training, evaluation). Every stage's output that costs time (image and sentence embeddings) is cached,
so a second run only retrains.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lookalike.catalogue import load_catalogue
from lookalike.catalogue.split import cold_start_split, split_ids, subsample
from lookalike.config import RunConfig
from lookalike.encoders.embedding import Embedded, cache_root, embed_catalogue, image_encoder
from lookalike.encoders.projection import ImageSpace
from lookalike.encoders.views import embed_views
from lookalike.errors import LookalikeError
from lookalike.evaluation.centrality import centrality_report, centrality_scores
from lookalike.evaluation.evaluate import (
    BIASED_TASKS,
    evaluate_split,
    headline,
    query_vectors,
    ranked_gallery,
    validator,
)
from lookalike.evaluation.evaluator import relevance_keys
from lookalike.model import LookalikeModel, create_model
from lookalike.provenance import provenance
from lookalike.retrieval.ranking import Gallery, rank, stacked
from lookalike.towers import AttributeVocab
from lookalike.training.augment import Augmenter, read_synonyms, synonym_rows
from lookalike.training.tracking import Tracker
from lookalike.training.trainer import TrainSet, train

logger = logging.getLogger(__name__)


def load_and_embed(cfg: RunConfig, progress: bool = True) -> Embedded:
    cat = load_catalogue(cfg.data.catalog, cfg.data.schema_, cfg.data.format)
    logger.info(cat.report.summary())
    if cfg.data.limit and cfg.data.limit < len(cat):
        cat = subsample(cat, cfg.data.limit, cfg.split.seed)
        logger.info(f"using a stratified random subset of {len(cat)} products (limit={cfg.data.limit})")
    at_most = round(len(cat) * (1 - cfg.split.val_fraction - cfg.split.test_fraction))
    if cfg.encoder.projection == "pca" and cfg.split.cold_start is None and at_most < cfg.encoder.projection_dim:
        # Said before embedding: the training split cannot be larger than this whatever the images hold.
        raise LookalikeError(
            f"PCA to {cfg.encoder.projection_dim} dims needs at least {cfg.encoder.projection_dim} "
            f"training images, and {len(cat)} products leave about {at_most} for training; "
            "use --projection none or a smaller encoder.projection_dim"
        )
    return embed_catalogue(cat, cfg, progress)


def sample_grids(
    model: LookalikeModel,
    emb: Embedded,
    idx: np.ndarray,
    ranked: tuple[np.ndarray, np.ndarray | None],
    results_dir: Path,
    n: int,
) -> list[str]:
    """Top-5 grids for a few test queries spread over categories (JSON, text and image queries)."""
    from lookalike.evaluation.plots import result_grid  # matplotlib: only a training run draws (see run_main)

    if n == 0:
        return []
    out = results_dir / "similarity_search"
    out.mkdir(parents=True, exist_ok=True)
    products = [emb.products[i] for i in idx]
    gallery, bias = ranked
    field = emb.catalogue.schema.category_field
    seen, picks = set(), []
    for j, p in enumerate(products):
        c = p.value(field) if field else str(j)
        if c not in seen:
            seen.add(c)
            picks.append(j)
        if len(picks) >= n:
            break
    keys = relevance_keys(products, emb.catalogue.schema.fields)
    queries = query_vectors(model, emb, idx[picks], gallery[picks])
    ranked_on = Gallery(gallery, [p.id for p in products], bias)
    written = []
    for task, q in queries.items():
        exclude = np.array(picks) if task == "image_to_image" else None  # the query's own photo
        rows, scores = stacked(rank(q, ranked_on, 5, corrected=task in BIASED_TASKS, exclude=exclude))
        for j, top, top_scores in zip(picks, rows, scores):
            p = products[j]
            label = {
                "json_to_image": json.dumps(p.attributes, ensure_ascii=False),
                "text_to_image": repr(p.text),
                "image_to_image": f"image of {p.id}",
            }[task]
            path = out / f"{task}_{p.id}.png"
            result_grid(
                f"{task}: {label}",
                p.image if task == "image_to_image" else None,
                [
                    (products[t].image, products[t].id, float(s), bool(keys[t] == keys[j]))
                    for t, s in zip(top, top_scores)
                ],
                path,
            )
            written.append(str(path))
    return written


@dataclass
class Prepared:
    """Everything training needs, computed once and shared (e.g. by every run of a temperature study)."""

    emb: Embedded
    split: dict[str, list[str]]
    idx: dict[str, np.ndarray]
    space: ImageSpace
    vocab: AttributeVocab
    data: TrainSet
    val: TrainSet | None = None  # the validation split as training sees it: its InfoNCE loss is logged per epoch

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.idx.items()}


def prepare(cfg: RunConfig, progress: bool = True) -> Prepared:
    emb = load_and_embed(cfg, progress)
    schema = emb.catalogue.schema
    cold = cfg.split.cold_start
    split = (
        split_ids(emb.catalogue, cfg.split.val_fraction, cfg.split.test_fraction, cfg.split.seed)
        if cold is None
        else cold_start_split(
            emb.catalogue, cold.field, cfg.split.val_fraction, cfg.split.seed, cold.values, cold.fraction
        )
    )
    pos = {p.id: i for i, p in enumerate(emb.products)}
    idx = {k: np.array([pos[i] for i in v], dtype=np.int64) for k, v in split.items()}
    if cfg.train.exclude_suspected_mislabels:
        from lookalike.tagging.audit import suspected_ids

        flagged = suspected_ids(cfg.train.exclude_suspected_mislabels)
        split["train"] = [i for i in split["train"] if i not in flagged]
        n_before = len(idx["train"])
        idx["train"] = np.array([pos[i] for i in split["train"]], dtype=np.int64)
        logger.info(
            f"left {n_before - len(idx['train'])} suspected mislabels out of training "
            f"({cfg.train.exclude_suspected_mislabels})"
        )
    logger.info(
        f"split (stratified by {schema.category_field}, seed {cfg.split.seed}): { {k: len(v) for k, v in idx.items()} }"
    )
    space = ImageSpace(cfg.encoder.projection, cfg.encoder.projection_dim).fit(emb.features[idx["train"]])
    images = space.transform(emb.features)
    tr = idx["train"]
    rows = [emb.products[i].attributes for i in tr]
    vocab = AttributeVocab.build(rows, schema.single_fields, schema.list_fields)
    aug = cfg.augment
    synonyms = read_synonyms(aug.synonyms, schema.fields) if aug.synonyms else None
    if synonyms:  # each synonym gets its own embedding, trained by replacing its value
        extra = synonym_rows(synonyms, vocab, schema.list_fields)
        vocab = AttributeVocab.build(rows + extra, schema.single_fields, schema.list_fields)
        logger.info(f"synonym table {aug.synonyms}: {len(extra)} synonyms joined the vocabulary")
    groups = relevance_keys(emb.products, schema.fields)
    category = cfg.train.soft_category_field
    if category is not None and category not in schema.single_fields:
        raise LookalikeError(
            f"train.soft_category_field {category!r} is not a single-valued field of the catalogue; "
            f"those are {schema.single_fields}"
        )
    if category is None and schema.category_field in schema.single_fields:
        category = schema.category_field

    def trainset(rows: np.ndarray) -> TrainSet:
        return TrainSet(
            attributes=vocab.encode([emb.products[i].attributes for i in rows]),
            images=torch.from_numpy(images[rows]),
            groups=torch.from_numpy(groups[rows]),
            sentences=torch.from_numpy(emb.sentences[rows]) if emb.sentences is not None else None,
            category=category,
        )

    data = trainset(tr)
    views = None
    if aug.image_views:
        raw = embed_views(
            [emb.products[i].image for i in tr],
            image_encoder(cfg),
            cache_root(cfg),
            aug.image_views,
            aug.view_seed,
            cfg.encoder.batch_size,
            progress,
        )
        views = torch.from_numpy(np.stack([space.transform(v) for v in raw]))
    augmenter = Augmenter(aug, vocab, data.attributes, data.images, category, synonyms, views)
    if augmenter.active:
        data.augment = augmenter
    return Prepared(emb, split, idx, space, vocab, data, trainset(idx["val"]) if len(idx["val"]) else None)


def prepare_checkpoint(
    checkpoint: str | Path, cache_dir: str | None = None, progress: bool = True
) -> tuple[LookalikeModel, RunConfig, Prepared]:
    """A checkpoint with the data and split it was trained on, so a model fitted on top of it (an adapter, a
    reranker) never sees that checkpoint's validation or test products in training."""
    model, _ = LookalikeModel.load(checkpoint)
    rcfg = model.config.apply_quick()
    if cache_dir:
        rcfg = rcfg.model_copy(update={"encoder": rcfg.encoder.model_copy(update={"cache_dir": cache_dir})})
    return model, rcfg, prepare(rcfg, progress)


def new_model(cfg: RunConfig, prep: Prepared) -> LookalikeModel:
    text_dim = prep.emb.sentences.shape[1] if prep.emb.sentences is not None else 512
    model = create_model(cfg, prep.vocab, prep.space, prep.emb.features.shape[1], text_dim)
    model.query_bank = prep.data.attributes
    return model


def run_main(cfg: RunConfig, resume: bool = False, progress: bool = True, prep: Prepared | None = None) -> dict:
    """Train and evaluate; returns a summary with the artifact paths."""
    # matplotlib costs over a second to import; the service, search and ingest import this module but never draw.
    from lookalike.evaluation.plots import similarity_histogram, training_charts

    cfg = cfg.apply_quick()
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    results_dir, ckpt_dir = out / "results", out / "checkpoints"
    results_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    prep = prep or prepare(cfg, progress)
    emb, split, idx, sizes = prep.emb, prep.split, prep.idx, prep.sizes
    schema = emb.catalogue.schema
    (results_dir / "split.json").write_text(
        json.dumps({"seed": cfg.split.seed, "sizes": sizes, **split}), encoding="utf-8"
    )
    model = new_model(cfg, prep)
    data = prep.data
    t_train = time.perf_counter()
    extra = {"schema": schema.model_dump(mode="json"), "split_sizes": sizes}
    tracker = Tracker(cfg, out / "tb", cfg.tracking.mlflow_uri, run_name=out.name)
    try:
        history = train(
            model,
            data,
            validator(emb, idx["val"], cfg),
            cfg.train,
            ckpt_dir,
            resume,
            progress,
            extra,
            val_data=prep.val,
            on_epoch=tracker.epoch,
        )
    except BaseException:
        tracker.close(failed=True)
        raise
    train_s = time.perf_counter() - t_train
    best, payload = LookalikeModel.load(ckpt_dir / "best_model.pt")
    logger.info(
        f"best epoch {payload['epoch']} ({cfg.train.val_metric} = {payload['val_metric']:.4f}); "
        "evaluating on the test split"
    )

    t_eval = time.perf_counter()
    ranked = ranked_gallery(best, emb, idx["test"])  # the hubness offsets are computed once, for both below
    evaluation = evaluate_split(best, emb, idx["test"], cfg, results_dir / "runs", ranked=ranked)
    central = centrality_scores(emb.features[idx["test"]])
    test_products = [emb.products[i] for i in idx["test"]]
    sales = (
        np.array([np.nan if p.sales is None else p.sales for p in test_products])
        if any(p.sales is not None for p in test_products)
        else None
    )
    evaluation["centrality"] = centrality_report(
        central,
        [p.value(schema.category_field) if schema.category_field else "" for p in test_products],
        cfg.eval.anchor_fraction,
        sales,
        [p.id for p in test_products],
    )
    info = {
        **provenance(),
        "config": cfg.model_dump(mode="json", by_alias=True),
        "seed": cfg.train.seed,
        "split": {"seed": cfg.split.seed, "sizes": sizes, "file": "split.json", "stratified_by": schema.category_field},
        "catalogue": emb.catalogue.report.to_dict(),
    }
    evaluation.update(
        {
            "split": "test",
            "checkpoint": str(ckpt_dir / "best_model.pt"),
            "best_epoch": payload["epoch"],
            **{k: info[k] for k in ("timestamp", "versions", "config", "seed", "split")},
        }
    )
    for task in ("json_to_image", "text_to_image"):
        if task in evaluation:
            similarity_histogram(
                evaluation[task]["similarity"], results_dir / f"similarity_{task}.png", f"{task} (test)"
            )
    grids = sample_grids(best, emb, idx["test"], ranked, results_dir, cfg.eval.sample_queries)
    # The tagger (image → attributes) is part of the model: trained on the same split, saved in the checkpoint.
    from lookalike.tagging.build import attach, train_tagger
    from lookalike.tagging.evaluate import tagging_figures

    t_tag = time.perf_counter()
    tagger, tag_data = train_tagger(best, emb, idx, cache_root(cfg))
    attach(ckpt_dir / "best_model.pt", tagger)
    evaluation["tagging"] = tagging_figures(tagger, tag_data.take(idx["test"]))
    if "style" in schema.list_fields or any("style_folder" in p.extra for p in test_products):
        # K-Fashion: the style (로맨틱 / 리조트 / 레트로 …) as a grouping beside the garment slot
        from lookalike.catalogue.kfashion import style_group
        from lookalike.tagging.evaluate import accuracy_by_group

        styles = [style_group(p) for p in test_products]
        evaluation["by_style"] = {
            "centrality": centrality_report(central, styles, cfg.eval.anchor_fraction),
            "tagging": accuracy_by_group(tagger, tag_data.take(idx["test"]), styles),
        }
    tagging_s = time.perf_counter() - t_tag
    eval_s = time.perf_counter() - t_eval
    (results_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False), encoding="utf-8")
    training_charts(
        history, results_dir / "training_charts.png", f"lookalike · {cfg.encoder.image_model} · {cfg.data.catalog}"
    )
    timings = {
        **emb.timings,
        "training_s": round(train_s, 2),
        "evaluation_s": round(eval_s - tagging_s, 2),
        "tagging_s": round(tagging_s, 2),
        "total_s": round(time.perf_counter() - t_start, 2),
    }
    training_results = {
        **info,
        "history": history,
        "best_epoch": payload["epoch"],
        "best_val_metric": payload["val_metric"],
        "val_metric": cfg.train.val_metric,
        "timings": timings,
        "test_headline": headline(evaluation),
    }
    (results_dir / "training_results.json").write_text(
        json.dumps(training_results, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    tracker.finish(
        {"best_val_metric": payload["val_metric"], "best_epoch": payload["epoch"], **training_results["test_headline"]},
        [out / "config.json", results_dir / "training_results.json", results_dir / "evaluation.json"],
    )
    tracker.close()
    return {
        "out_dir": str(out),
        "checkpoint": str(ckpt_dir / "best_model.pt"),
        "training_results": str(results_dir / "training_results.json"),
        "training_charts": str(results_dir / "training_charts.png"),
        "evaluation": str(results_dir / "evaluation.json"),
        "runs": str(results_dir / "runs"),
        "similarity_search": str(results_dir / "similarity_search"),
        "n_grids": len(grids),
        "headline": headline(evaluation),
        "timings": timings,
    }
