"""The main job and the commands built on it: load → embed (frozen) → split → train → evaluate → artifacts.

Data flows one way: catalogue → encoders → towers → training → evaluation. Every stage's output
that costs time (image and sentence embeddings) is cached, so a second run only retrains.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lookalike.catalogue import Catalogue, CatalogueSchema, load_catalogue
from lookalike.catalogue.split import cold_start_split, split_ids, subsample
from lookalike.config import RunConfig
from lookalike.encoders.efficientnet import default_cache_dir
from lookalike.encoders.embedder import embed_images, embed_texts
from lookalike.encoders.projection import ImageSpace
from lookalike.encoders.registry import create_text_encoder, image_encoder_for
from lookalike.errors import LookalikeError
from lookalike.evaluation.centrality import anchor_mask, centrality_report, centrality_scores
from lookalike.evaluation.evaluator import RetrievalEvaluator, get_metric, relevance_keys
from lookalike.model import LookalikeModel, create_model
from lookalike.provenance import provenance
from lookalike.towers import AttributeVocab
from lookalike.training.trainer import TrainSet, train

if TYPE_CHECKING:
    from lookalike.distributed import RayOptions


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Embedded:
    """A catalogue with its frozen embeddings: backbone features (n, d) and sentence vectors (n, t)."""

    catalogue: Catalogue
    features: np.ndarray
    sentences: np.ndarray | None
    timings: dict

    @property
    def products(self):
        return self.catalogue.products


def cache_root(cfg: RunConfig) -> Path:
    return Path(cfg.encoder.cache_dir) if cfg.encoder.cache_dir else default_cache_dir()


def image_encoder(cfg: RunConfig):
    return image_encoder_for(cfg.encoder, cache_root(cfg))


def embed_catalogue(cat: Catalogue, cfg: RunConfig, progress: bool = True, texts: bool = True,
                    ray: RayOptions | None = None) -> Embedded:
    """Image vectors (and, with `texts`, the frozen text encoder's vectors) of every product, cached;
    with `ray`, the images the cache lacks are embedded on Ray (same cache, same vectors)."""
    timings = {}
    t = time.perf_counter()
    refs = [p.image for p in cat.products]
    if ray is None:
        res = embed_images(refs, image_encoder(cfg), cache_root(cfg), cfg.encoder.batch_size, progress=progress)
    else:
        from lookalike.distributed.ray_engine import embed_images_ray

        res = embed_images_ray(refs, cfg.encoder, cache_root(cfg), address=ray.address, num_cpus=ray.num_cpus,
                               num_actors=ray.num_actors, batch_size=ray.batch_size, shard_size=ray.shard_size,
                               progress=progress)
    timings["image_embedding_s"] = round(time.perf_counter() - t, 2)
    timings["images_cached"], timings["images_computed"] = res.cached, res.computed
    if res.computed:
        timings["images_per_s"] = round(res.computed / max(res.seconds, 1e-9), 1)
    timings["images_skipped"] = len(res.failed)
    if res.failed:
        by_reason: dict[str, set[str]] = {}
        for i, reason in res.failed.items():
            by_reason.setdefault(reason, set()).add(cat.products[i].id)
        keep = np.array([i not in res.failed for i in range(len(cat))])
        features = res.vectors[keep]
        for reason, ids in by_reason.items():
            cat = cat.drop(ids, reason)
        log(f"skipped {len(res.failed)} products whose image failed: " +
            ", ".join(f"{r}={len(v)}" for r, v in by_reason.items()))
    else:
        features = res.vectors
    sentences = None
    if texts and (cat.schema.text_field or any(p.text for p in cat.products)):
        t = time.perf_counter()
        sentences = embed_texts([p.text for p in cat.products], create_text_encoder(cfg.encoder.text_model),
                                cache_root(cfg), progress=progress)
        timings["text_embedding_s"] = round(time.perf_counter() - t, 2)
    return Embedded(cat, features, sentences, timings)


def embedding_counts(timings: dict, engine: str) -> str:
    """The line `embed` and `catalog ingest` print: what the cache answered and what was computed."""
    rate = f", {timings['images_per_s']} images/s" if timings.get("images_per_s") else ""
    return (f"cache hits {timings['images_cached']}, new embeddings {timings['images_computed']}, "
            f"skipped {timings['images_skipped']}{rate} ({engine} engine)")


def load_and_embed(cfg: RunConfig, progress: bool = True) -> Embedded:
    cat = load_catalogue(cfg.data.catalog, cfg.data.schema_, cfg.data.format)
    log(cat.report.summary())
    if cfg.data.limit and cfg.data.limit < len(cat):
        cat = subsample(cat, cfg.data.limit, cfg.split.seed)
        log(f"using a stratified random subset of {len(cat)} products (limit={cfg.data.limit})")
    at_most = round(len(cat) * (1 - cfg.split.val_fraction - cfg.split.test_fraction))
    if cfg.encoder.projection == "pca" and cfg.split.cold_start is None and at_most < cfg.encoder.projection_dim:
        # Said before embedding: the training split cannot be larger than this whatever the images hold.
        raise LookalikeError(f"PCA to {cfg.encoder.projection_dim} dims needs at least {cfg.encoder.projection_dim} "
                             f"training images, and {len(cat)} products leave about {at_most} for training; "
                             "use --projection none or a smaller encoder.projection_dim")
    return embed_catalogue(cat, cfg, progress)


def eval_definitions(cfg: RunConfig, schema: CatalogueSchema, instance: bool = True) -> dict[str, list[str] | None]:
    fields = cfg.eval.attribute_fields or schema.fields
    unknown = [f for f in [*fields, *(f for fs in cfg.eval.extra_relevance.values() for f in fs)] if f not in schema.fields]
    if unknown:
        raise LookalikeError(f"relevance fields not in the catalogue schema: {unknown}; fields are {schema.fields}")
    defs: dict[str, list[str] | None] = {"instance": None} if instance else {}
    defs["attribute"] = list(fields)
    defs.update({f"attribute:{name}": list(fs) for name, fs in cfg.eval.extra_relevance.items()})
    return defs


BIASED_TASKS = ("json_to_image", "text_to_image")  # the hubness correction's bank holds training JSON queries


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


def evaluate_split(model: LookalikeModel, emb: Embedded, idx: np.ndarray, cfg: RunConfig, out_dir: Path | None,
                   per_category: bool = True, ranked: tuple[np.ndarray, np.ndarray | None] | None = None) -> dict:
    """Whole-gallery evaluation of products `idx`: each is a query, all of them the gallery.
    `ranked`: `ranked_gallery` of the same products, when the caller already has it."""
    products = [emb.products[i] for i in idx]
    gallery, bias = ranked or ranked_gallery(model, emb, idx)
    central = centrality_scores(emb.features[idx])
    anchors = anchor_mask(central, cfg.eval.anchor_fraction)
    evaluator = RetrievalEvaluator(products, eval_definitions(cfg, emb.catalogue.schema), cfg.eval.ks,
                                   cfg.eval.run_depth, anchors, emb.catalogue.schema.category_field)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    queries = query_vectors(model, emb, idx, gallery)
    biases = {}
    if bias is not None:  # ranked with the hubness correction; the plain-cosine ranking is reported beside it
        for task in [t for t in queries if t in BIASED_TASKS]:
            queries[f"{task}_cosine"] = queries[task]
            biases[task] = bias
    results = evaluator(queries, gallery, out_dir, per_category=per_category, biases=biases)
    results["ranking"] = {"hubness_weight": model.config.retrieval.hubness_weight if bias is not None else 0.0,
                          "hubness_k": model.config.retrieval.hubness_k,
                          "corrected_tasks": sorted(biases), "note": "TASK_cosine: the same queries ranked by plain cosine"}
    results["relevance_definitions"] = evaluator.definitions
    results["anchor_fraction"] = cfg.eval.anchor_fraction
    results["metric_depth_note"] = (f"MRR and MAP are computed on the top-{cfg.eval.run_depth} run (as trec_eval "
                                    "on the exported run); recall denominators count the whole gallery.")
    return results


def validator(emb: Embedded, idx: np.ndarray, cfg: RunConfig):
    products = [emb.products[i] for i in idx]
    defs = eval_definitions(cfg, emb.catalogue.schema, instance=False)
    evaluator = RetrievalEvaluator(products, defs, cfg.eval.ks, cfg.eval.run_depth)

    gallery = None

    def validate(model: LookalikeModel) -> dict:
        """JSON → image on the whole validation gallery (the early-stopping metric's task, nothing more)."""
        nonlocal gallery
        if gallery is None:  # the image space is frozen: embed the gallery once
            gallery = model.space.transform(emb.features[idx])
        q = {"json_to_image": model.encode_attributes([p.attributes for p in products])}
        return evaluator(q, gallery, per_category=False)

    return validate


def sample_grids(model: LookalikeModel, emb: Embedded, idx: np.ndarray, ranked: tuple[np.ndarray, np.ndarray | None],
                 results_dir: Path, n: int) -> list[str]:
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
    written = []
    for task, q in queries.items():
        scores = q @ gallery.T
        if bias is not None and task in BIASED_TASKS:
            scores = scores + bias[None, :]
        for row, j in enumerate(picks):
            s = scores[row].copy()
            if task == "image_to_image":
                s[j] = -np.inf
            top = np.argsort(-s, kind="stable")[:5]
            p = products[j]
            label = {"json_to_image": json.dumps(p.attributes, ensure_ascii=False),
                     "text_to_image": repr(p.text), "image_to_image": f"image of {p.id}"}[task]
            path = out / f"{task}_{p.id}.png"
            result_grid(f"{task}: {label}", p.image if task == "image_to_image" else None,
                        [(products[t].image, products[t].id, float(s[t]), bool(keys[t] == keys[j])) for t in top], path)
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

    @property
    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.idx.items()}


def prepare(cfg: RunConfig, progress: bool = True) -> Prepared:
    emb = load_and_embed(cfg, progress)
    schema = emb.catalogue.schema
    cold = cfg.split.cold_start
    split = split_ids(emb.catalogue, cfg.split.val_fraction, cfg.split.test_fraction, cfg.split.seed) if cold is None \
        else cold_start_split(emb.catalogue, cold.field, cfg.split.val_fraction, cfg.split.seed, cold.values, cold.fraction)
    pos = {p.id: i for i, p in enumerate(emb.products)}
    idx = {k: np.array([pos[i] for i in v], dtype=np.int64) for k, v in split.items()}
    log(f"split (stratified by {schema.category_field}, seed {cfg.split.seed}): { {k: len(v) for k, v in idx.items()} }")
    space = ImageSpace(cfg.encoder.projection, cfg.encoder.projection_dim).fit(emb.features[idx["train"]])
    images = space.transform(emb.features)
    tr = idx["train"]
    vocab = AttributeVocab.build([emb.products[i].attributes for i in tr], schema.single_fields, schema.list_fields)
    groups = relevance_keys(emb.products, schema.fields)
    category = cfg.train.soft_category_field
    if category is not None and category not in schema.single_fields:
        raise LookalikeError(f"train.soft_category_field {category!r} is not a single-valued field of the catalogue; "
                             f"those are {schema.single_fields}")
    if category is None and schema.category_field in schema.single_fields:
        category = schema.category_field
    data = TrainSet(attributes=vocab.encode([emb.products[i].attributes for i in tr]),
                    images=torch.from_numpy(images[tr]), groups=torch.from_numpy(groups[tr]),
                    sentences=torch.from_numpy(emb.sentences[tr]) if emb.sentences is not None else None,
                    category=category)
    return Prepared(emb, split, idx, space, vocab, data)


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
    (results_dir / "split.json").write_text(json.dumps({"seed": cfg.split.seed, "sizes": sizes, **split}), encoding="utf-8")
    model = new_model(cfg, prep)
    data = prep.data
    t_train = time.perf_counter()
    extra = {"schema": schema.model_dump(mode="json"), "split_sizes": sizes}
    history = train(model, data, validator(emb, idx["val"], cfg), cfg.train, ckpt_dir, resume, progress, extra)
    train_s = time.perf_counter() - t_train
    best, payload = LookalikeModel.load(ckpt_dir / "best_model.pt")
    log(f"best epoch {payload['epoch']} ({cfg.train.val_metric} = {payload['val_metric']:.4f}); evaluating on the test split")

    t_eval = time.perf_counter()
    ranked = ranked_gallery(best, emb, idx["test"])  # the hubness offsets are computed once, for both below
    evaluation = evaluate_split(best, emb, idx["test"], cfg, results_dir / "runs", ranked=ranked)
    central = centrality_scores(emb.features[idx["test"]])
    test_products = [emb.products[i] for i in idx["test"]]
    sales = np.array([np.nan if p.sales is None else p.sales for p in test_products]) \
        if any(p.sales is not None for p in test_products) else None
    evaluation["centrality"] = centrality_report(central, [p.value(schema.category_field) if schema.category_field else ""
                                                           for p in test_products], cfg.eval.anchor_fraction, sales,
                                                 [p.id for p in test_products])
    info = {**provenance(), "config": cfg.model_dump(mode="json", by_alias=True), "seed": cfg.train.seed,
            "split": {"seed": cfg.split.seed, "sizes": sizes, "file": "split.json", "stratified_by": schema.category_field},
            "catalogue": emb.catalogue.report.to_dict()}
    evaluation.update({"split": "test", "checkpoint": str(ckpt_dir / "best_model.pt"), "best_epoch": payload["epoch"],
                       **{k: info[k] for k in ("timestamp", "versions", "config", "seed", "split")}})
    for task in ("json_to_image", "text_to_image"):
        if task in evaluation:
            similarity_histogram(evaluation[task]["similarity"], results_dir / f"similarity_{task}.png", f"{task} (test)")
    grids = sample_grids(best, emb, idx["test"], ranked, results_dir, cfg.eval.sample_queries)
    eval_s = time.perf_counter() - t_eval
    (results_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False), encoding="utf-8")
    training_charts(history, results_dir / "training_charts.png", f"lookalike · {cfg.encoder.image_model} · {cfg.data.catalog}")
    timings = {**emb.timings, "training_s": round(train_s, 2), "evaluation_s": round(eval_s, 2),
               "total_s": round(time.perf_counter() - t_start, 2)}
    training_results = {**info, "history": history, "best_epoch": payload["epoch"], "best_val_metric": payload["val_metric"],
                        "val_metric": cfg.train.val_metric, "timings": timings,
                        "test_headline": headline(evaluation)}
    (results_dir / "training_results.json").write_text(json.dumps(training_results, indent=2, ensure_ascii=False), encoding="utf-8")
    return {"out_dir": str(out), "checkpoint": str(ckpt_dir / "best_model.pt"),
            "training_results": str(results_dir / "training_results.json"),
            "training_charts": str(results_dir / "training_charts.png"),
            "evaluation": str(results_dir / "evaluation.json"), "runs": str(results_dir / "runs"),
            "similarity_search": str(results_dir / "similarity_search"), "n_grids": len(grids),
            "headline": headline(evaluation), "timings": timings}


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


def checkpoint_schema(payload: dict) -> CatalogueSchema | None:
    return CatalogueSchema.model_validate(payload["schema"]) if payload.get("schema") else None


def load_for_checkpoint(model: LookalikeModel, payload: dict, catalog: str, schema: CatalogueSchema | None = None,
                        cache_dir: str | None = None, progress: bool = True) -> tuple[Embedded, object]:
    """Load and embed a catalogue with the encoder settings the checkpoint was trained with."""
    cfg = model.config
    if cache_dir:
        cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"cache_dir": cache_dir})})
    cat: Catalogue = load_catalogue(catalog, schema, fallback_schema=checkpoint_schema(payload))
    missing = [f for f in model.vocab.fields if f not in cat.schema.fields]
    if missing:
        raise LookalikeError(f"catalogue {catalog} lacks fields the model was trained on: {missing}")
    return embed_catalogue(cat, cfg, progress), cfg


def evaluate_checkpoint(checkpoint: str, catalog: str, out_dir: str, schema: CatalogueSchema | None = None,
                        cache_dir: str | None = None, progress: bool = True) -> dict:
    """Evaluate a trained model on any catalogue of the same schema, every product as query and gallery."""
    model, payload = LookalikeModel.load(checkpoint)
    emb, cfg = load_for_checkpoint(model, payload, catalog, schema, cache_dir, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    evaluation = evaluate_split(model, emb, np.arange(len(emb.products)), cfg, out)
    evaluation.update({**provenance(), "checkpoint": str(checkpoint), "catalog": str(catalog),
                       "catalogue": emb.catalogue.report.to_dict(), "timings": {**emb.timings,
                       "evaluation_s": round(time.perf_counter() - t, 2)}, "headline": headline(evaluation)})
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False), encoding="utf-8")
    return evaluation
