"""A catalogue's frozen embeddings: every product's image vector (and text vector), through the cache.

What every consumer of a catalogue needs before anything is trained or served (the main job, `embed`,
`evaluate`, `search`, ingest): the image encoder a config names, the cache it writes to, and the
vectors of every product whose image could be read, locally or on Ray.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.catalogue import Catalogue
from lookalike.config import RunConfig
from lookalike.encoders.base import ImageEncoder
from lookalike.encoders.efficientnet import default_cache_dir
from lookalike.encoders.embedder import embed_images, embed_texts
from lookalike.encoders.registry import create_text_encoder, image_encoder_for

if TYPE_CHECKING:
    from lookalike.distributed import RayOptions

logger = logging.getLogger(__name__)


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


def image_encoder(cfg: RunConfig) -> ImageEncoder:
    return image_encoder_for(cfg.encoder, cache_root(cfg))


def embed_catalogue(
    cat: Catalogue, cfg: RunConfig, progress: bool = True, texts: bool = True, ray: RayOptions | None = None
) -> Embedded:
    """Image vectors (and, with `texts`, the frozen text encoder's vectors) of every product, cached;
    with `ray`, the images the cache lacks are embedded on Ray (same cache, same vectors). Products whose
    image cannot be read are dropped from the catalogue and counted in its report by reason."""
    timings = {}
    t = time.perf_counter()
    refs = [p.image for p in cat.products]
    if ray is None:
        res = embed_images(refs, image_encoder(cfg), cache_root(cfg), cfg.encoder.batch_size, progress=progress)
    else:
        from lookalike.distributed.ray_engine import embed_images_ray

        res = embed_images_ray(
            refs,
            cfg.encoder,
            cache_root(cfg),
            address=ray.address,
            num_cpus=ray.num_cpus,
            num_actors=ray.num_actors,
            batch_size=ray.batch_size,
            shard_size=ray.shard_size,
            progress=progress,
        )
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
        logger.warning(
            "skipped %d products whose image failed: %s",
            len(res.failed),
            ", ".join(f"{r}={len(v)}" for r, v in by_reason.items()),
        )
    else:
        features = res.vectors
    sentences = None
    if texts and (cat.schema.text_field or any(p.text for p in cat.products)):
        t = time.perf_counter()
        sentences = embed_texts(
            [p.text for p in cat.products],
            create_text_encoder(cfg.encoder.text_model),
            cache_root(cfg),
            progress=progress,
        )
        timings["text_embedding_s"] = round(time.perf_counter() - t, 2)
    return Embedded(cat, features, sentences, timings)


def embedding_counts(timings: dict, engine: str) -> str:
    """The line `embed` and `catalog ingest` print: what the cache answered and what was computed."""
    rate = f", {timings['images_per_s']} images/s" if timings.get("images_per_s") else ""
    return (
        f"cache hits {timings['images_cached']}, new embeddings {timings['images_computed']}, "
        f"skipped {timings['images_skipped']}{rate} ({engine} engine)"
    )
