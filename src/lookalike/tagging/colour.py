"""Colour features from the pixels: a foreground colour histogram in CIELAB.

Globally pooled ImageNet features keep shape and texture but lose hue (the plain probe on them reached
0.56 on baseColour), so the tagger also reads the colours themselves. Catalogue thumbnails sit on white,
so near-white, near-grey pixels are background; what remains is binned in CIELAB (perceptual: equal
distances look about equally different), jointly and as hue × chroma, with greys binned by lightness.
Features are cached like embeddings (keyed by the image bytes and crop), so a catalogue's pixels are
read once.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.catalogue.schema import ImageRef
from lookalike.encoders.cache import EmbeddingCache, FileKeys

logger = logging.getLogger(__name__)

SIDE = 64  # pixels are binned at this size: colour needs no detail
L_BINS, AB_BINS, HUE_BINS, GREY_BINS = 4, 6, 12, 6
AB_RANGE = 60.0
CHROMA_GREY = 8.0  # below this chroma a pixel is a grey; near-white greys are background
WHITE_L = 92.0
FINGERPRINT = f"lab-hist-v1-{SIDE}-{L_BINS}x{AB_BINS}-{HUE_BINS}-{GREY_BINS}"
DIM = L_BINS * AB_BINS * AB_BINS + HUE_BINS * 2 + GREY_BINS + 8


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in 0..255 → CIELAB (D65)."""
    c = rgb.astype(np.float32) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        np.float32,
    )
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def colour_vector(image: Image.Image) -> np.ndarray:
    """The colour features of one image (`DIM` floats): histograms are shares of the foreground, square-rooted
    (Hellinger) so a linear model compares them fairly."""
    im = image.convert("RGB")
    im.thumbnail((SIDE, SIDE))
    lab = srgb_to_lab(np.asarray(im)).reshape(-1, 3)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    fg = ~((lab[:, 0] > WHITE_L) & (chroma < CHROMA_GREY))
    share = float(fg.mean()) if len(fg) else 0.0
    px, ch = (lab[fg], chroma[fg]) if fg.sum() >= 4 else (lab, chroma)
    n = max(len(px), 1)
    li = np.clip((px[:, 0] / 100 * L_BINS).astype(int), 0, L_BINS - 1)
    ai = np.clip(((px[:, 1] + AB_RANGE) / (2 * AB_RANGE) * AB_BINS).astype(int), 0, AB_BINS - 1)
    bi = np.clip(((px[:, 2] + AB_RANGE) / (2 * AB_RANGE) * AB_BINS).astype(int), 0, AB_BINS - 1)
    joint = np.bincount((li * AB_BINS + ai) * AB_BINS + bi, minlength=L_BINS * AB_BINS * AB_BINS) / n
    coloured = ch >= CHROMA_GREY
    hue = (np.arctan2(px[:, 2], px[:, 1]) + np.pi) / (2 * np.pi)
    hi = np.clip((hue * HUE_BINS).astype(int), 0, HUE_BINS - 1)
    strong = (ch >= 3 * CHROMA_GREY).astype(int)
    hues = np.bincount((hi * 2 + strong)[coloured], minlength=HUE_BINS * 2) / n
    gi = np.clip((px[~coloured, 0] / 100 * GREY_BINS).astype(int), 0, GREY_BINS - 1)
    greys = np.bincount(gi, minlength=GREY_BINS) / n
    stats = np.array([*(px.mean(0) / 100), *(px.std(0) / 100), float(np.median(ch)) / 100, share], np.float32)
    return np.concatenate([np.sqrt(joint), np.sqrt(hues), np.sqrt(greys), stats]).astype(np.float32)


def _features_of(ref: ImageRef, data: bytes | None) -> np.ndarray | None:
    try:
        raw = data if data is not None else ref.path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            if ref.box is None:
                im.draft("RGB", (SIDE * 2, SIDE * 2))  # JPEG: decode at a fraction of the size
                return colour_vector(im)
            im.load()
            return colour_vector(im.crop(ref.box))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def colour_features(refs: list[ImageRef], cache_root: Path, workers: int = 2) -> tuple[np.ndarray, list[int]]:
    """Colour features of every image (rows of unreadable ones are zero) and the indices that failed; cached
    under `cache_root` beside the embeddings, keyed as they are (content SHA-1 + crop)."""
    from lookalike.encoders.embedder import cache_keys, plan_images

    cache = EmbeddingCache(cache_root, "colour", FINGERPRINT, DIM)
    plan = plan_images(refs, cache, FileKeys(Path(cache_root)), keep_bytes=False)
    out = np.zeros((len(refs), DIM), np.float32)
    if plan.hits:
        out[plan.hits] = cache.get(cache_keys(plan.keys, plan.hits))
    failed = set(plan.failed)
    done: list[int] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, v in zip(plan.todo, pool.map(lambda i: _features_of(refs[i], plan.data[i]), plan.todo)):
            plan.data[i] = None
            if v is None:
                failed.add(i)
            else:
                out[i] = v
                done.append(i)
    cache.put(cache_keys(plan.keys, done), out[done])
    if plan.todo:
        logger.info("colour features: %d cached, %d computed, %d unreadable", len(plan.hits), len(done), len(failed))
    return out, sorted(failed)
