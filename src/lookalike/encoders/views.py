"""Augmented views of catalogue images, embedded once by the frozen encoder and cached beside the originals.

The image encoder is frozen, so an image augmentation can be paid for once: view v of an image is the
recipe below (horizontal flip, rotation ±15°, colour jitter ±0.2, RandomResizedCrop of 80-100% of the area
at the image's own aspect) drawn with a seed made of the image's content key, v and `seed`, then embedded;
its vector is stored in the image cache under the original's key plus `#view=...`, so a second run (or a
larger V) computes only what is missing. Albumentations does the pixel work (torchvision does not import
beside this project's CPU torch wheel)."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lookalike.catalogue.schema import ImageRef
from lookalike.encoders.base import ImageEncoder
from lookalike.encoders.cache import EmbeddingCache, FileKeys
from lookalike.encoders.embedder import forward_grouped, plan_images

logger = logging.getLogger(__name__)

RECIPE = "flip0.5-rot15-jitter0.2-rrc0.8"  # in every view's key: another recipe never reads these vectors


def view_transform(height: int, width: int):
    import albumentations as A
    import cv2

    aspect = width / height
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=255, p=1.0),  # catalogue photos: white ground
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=1.0),
            A.RandomResizedCrop(size=(height, width), scale=(0.8, 1.0), ratio=(aspect * 0.9, aspect / 0.9), p=1.0),
        ]
    )


def view_key(key: str, view: int, seed: int) -> str:
    return f"{key}#view={RECIPE}:{seed}:{view}"


def render_view(image: Image.Image, key: str, view: int, seed: int) -> Image.Image:
    """View `view` of `image`: the same pixels for the same content, view and seed, on any machine."""
    rgb = np.asarray(image.convert("RGB"))
    transform = view_transform(*rgb.shape[:2])
    transform.set_random_seed(int.from_bytes(hashlib.sha1(view_key(key, view, seed).encode()).digest()[:4], "little"))
    return Image.fromarray(transform(image=rgb)["image"])


def embed_views(
    refs: list[ImageRef],
    encoder: ImageEncoder,
    cache_root: Path,
    views: int,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    flush_every: int = 8192,
) -> np.ndarray:
    """(views, len(refs), dim) vectors of each image's augmented views (an unreadable image's rows are zero:
    the caller keeps only products whose original was embedded)."""
    cache = EmbeddingCache(cache_root, "image", encoder.fingerprint(), encoder.dim)
    plan = plan_images(refs, cache, FileKeys(Path(cache_root)), keep_bytes=False)
    out = np.zeros((views, len(refs), encoder.dim), np.float32)
    wanted = [(i, v) for i in range(len(refs)) if plan.keys[i] is not None for v in range(views)]
    keys = {(i, v): view_key(str(plan.keys[i]), v, seed) for i, v in wanted}
    hits = [iv for iv in wanted if keys[iv] in cache]
    if hits:
        vecs = cache.get([keys[iv] for iv in hits])
        for (i, v), vec in zip(hits, vecs):
            out[v, i] = vec
    hit_set = set(hits)
    todo = [iv for iv in wanted if iv not in hit_set]
    bar = tqdm(total=len(todo), desc=f"embedding image views ({encoder.name})", unit="view", disable=not progress)
    by_image: dict[int, list[int]] = {}
    for i, v in todo:
        by_image.setdefault(i, []).append(v)
    done: list[tuple[int, int]] = []
    arrays: list[np.ndarray] = []
    unsaved: list[tuple[int, int]] = []

    def forward() -> None:
        vecs = forward_grouped(encoder, arrays)
        for (j, v), vec in zip(done, vecs):
            out[v, j] = vec
        unsaved.extend(done)
        bar.update(len(done))
        done.clear()
        arrays.clear()

    for i, vs in by_image.items():
        ref = refs[i]
        try:
            with Image.open(io.BytesIO(ref.path.read_bytes())) as opened:
                opened.load()
                im = opened if ref.box is None else opened.crop(ref.box)
                for v in vs:
                    arrays.append(encoder.preprocess(render_view(im, str(plan.keys[i]), v, seed)))
                    done.append((i, v))
        except (OSError, ValueError, SyntaxError) as e:  # the original failed the same way and is dropped
            logger.debug(f"no views of {ref.path}: {e}")
        if len(arrays) >= batch_size:
            forward()
        if len(unsaved) >= flush_every:
            cache.put([keys[iv] for iv in unsaved], np.stack([out[v, j] for j, v in unsaved]))
            unsaved.clear()
    if arrays:
        forward()
    if unsaved:
        cache.put([keys[iv] for iv in unsaved], np.stack([out[v, j] for j, v in unsaved]))
    bar.close()
    logger.info(f"image views: {len(hits)} cached, {len(todo)} computed ({views} per image)")
    return out
