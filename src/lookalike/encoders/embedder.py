"""Batch embedding of catalogue images and texts through a frozen encoder, with the cache in front.

Every image is first keyed (`plan_images`: a stat when `FileKeys` knows the file, else a read and a
hash); those not in the cache are then decoded and preprocessed on a thread pool (PIL releases the
GIL) while the encoder runs the previous batch, so the embedder keeps close to the bare forward pass's
throughput.
A missing or undecodable image is reported by index and reason; it never stops the run. The keying,
decoding and failure reasons here are shared with the Ray engine (lookalike.distributed.ray_engine).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from lookalike.catalogue.schema import ImageRef
from lookalike.encoders.base import ImageEncoder, TextEncoder
from lookalike.encoders.cache import EmbeddingCache, FileKeys, bytes_key, text_key


@dataclass
class EmbedResult:
    vectors: np.ndarray  # (n, dim); rows of failed items are zero
    failed: dict[int, str] = field(default_factory=dict)  # index -> reason
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    hashed: int = 0  # files read and hashed; the rest were known by their unchanged (size, mtime)
    # Where `seconds` went (keying_s, cache_write_s, and each engine's own), so a benchmark can say why
    # two runs differ.
    timings: dict[str, float] = field(default_factory=dict)


# Why an image has no vector; every engine reports failures with these reasons.
MISSING = "missing image"
CORRUPT = "corrupt image"
ACTOR_CRASHED = "actor crashed"


def _read(ref: ImageRef, keys: FileKeys, keep_bytes: bool) -> tuple[str | None, bytes | None, str | None, bool]:
    """(cache key, the bytes when read and `keep_bytes`, error, whether the file was read and hashed)."""
    path = str(ref.path)
    try:
        st = os.stat(path)  # before the read: a file changed after it gets a new mtime, so a stale entry never matches
        known = keys.lookup(path, st)
        if known is not None:
            return known + ref.cache_suffix(), None, None, False
        data = ref.path.read_bytes()
    except OSError:
        return None, None, MISSING, False
    key = bytes_key(data)
    keys.remember(path, st, key)
    return key + ref.cache_suffix(), data if keep_bytes else None, None, True


@dataclass
class KeyPlan:
    """Every image keyed as all engines key it (content SHA-1 + crop suffix) and sorted into cache hits,
    images still to embed and failures, so a rerun after an interruption embeds only what is missing."""

    keys: list[str | None]
    data: list[bytes | None]  # bytes read while hashing, kept for the decoder (local engine only)
    failed: dict[int, str]
    hits: list[int]
    todo: list[int]
    hashed: int


def cache_keys(keys: list[str | None], idx: list[int]) -> list[str]:
    """The cache keys of the images at `idx`, which were all read (cache hits or images embedded)."""
    out: list[str] = []
    for i in idx:
        key = keys[i]
        if key is None:
            raise RuntimeError(f"image {i} could not be read, so it has no cache key")
        out.append(key)
    return out


def plan_images(refs: list[ImageRef], cache: EmbeddingCache, keys: FileKeys, keep_bytes: bool = True) -> KeyPlan:
    reads = [_read(ref, keys, keep_bytes) for ref in refs]  # mostly stat calls once the files are known
    keys.save()  # now, not at the end: a killed run need not hash the files again
    plan = KeyPlan([r[0] for r in reads], [r[1] for r in reads], {}, [], [], hashed=sum(r[3] for r in reads))
    for i, (key, _, err, _) in enumerate(reads):
        if key is None:  # not read: `err` says why
            plan.failed[i] = err or MISSING
        elif key in cache:
            plan.hits.append(i)
        else:
            plan.todo.append(i)
    return plan


def load_pixels(encoder: ImageEncoder, ref: ImageRef, data: bytes | None = None) -> np.ndarray | str:
    """The encoder's input array for one image (read from disk when `data` is None), or a failure reason."""
    try:
        if data is None:
            data = ref.path.read_bytes()
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            im: Image.Image = opened if ref.box is None else opened.crop(ref.box)
            return encoder.preprocess(im)
    except FileNotFoundError:
        return MISSING
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return CORRUPT


def forward_grouped(encoder: ImageEncoder, arrays: list[np.ndarray]) -> np.ndarray:
    """Vectors of preprocessed arrays, in order; arrays of equal shape share one forward pass."""
    out = np.zeros((len(arrays), encoder.dim), np.float32)
    by_shape: dict[tuple, list[int]] = {}
    for j, a in enumerate(arrays):
        by_shape.setdefault(a.shape, []).append(j)
    for idx in by_shape.values():
        out[idx] = encoder.forward(np.stack([arrays[j] for j in idx]))
    return out


def embed_images(
    refs: list[ImageRef],
    encoder: ImageEncoder,
    cache_root: Path,
    batch_size: int = 64,
    workers: int = 1,
    progress: bool = True,
    flush_every: int = 8192,
) -> EmbedResult:
    import time

    t0 = time.perf_counter()
    cache = EmbeddingCache(cache_root, "image", encoder.fingerprint(), encoder.dim)
    plan = plan_images(refs, cache, FileKeys(Path(cache_root)))
    timings = {"keying_s": time.perf_counter() - t0, "cache_write_s": 0.0}
    out = np.zeros((len(refs), encoder.dim), np.float32)
    failed = plan.failed
    if plan.hits:
        out[plan.hits] = cache.get(cache_keys(plan.keys, plan.hits))
    todo = plan.todo
    with ThreadPoolExecutor(max(1, workers)) as pool:
        batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]

        def prepare(batch: list[int]):
            return [pool.submit(load_pixels, encoder, refs[i], plan.data[i]) for i in batch]

        bar = tqdm(
            total=len(todo), desc=f"embedding images ({encoder.name})", unit="img", disable=not progress or not todo
        )
        pending = prepare(batches[0]) if batches else []
        new_idx: list[int] = []
        for b, batch in enumerate(batches):
            arrays = [f.result() for f in pending]
            pending = prepare(batches[b + 1]) if b + 1 < len(batches) else []
            ok = [i for i, a in zip(batch, arrays) if not isinstance(a, str)]
            for i, a in zip(batch, arrays):
                if isinstance(a, str):
                    failed[i] = a
            if ok:
                out[ok] = forward_grouped(encoder, [a for a in arrays if not isinstance(a, str)])
                new_idx.extend(ok)
            if len(new_idx) >= flush_every or b + 1 == len(batches):
                t = time.perf_counter()
                cache.put(cache_keys(plan.keys, new_idx), out[new_idx])
                timings["cache_write_s"] += time.perf_counter() - t
                new_idx = []
            for i in batch:
                plan.data[i] = None  # free the bytes
            bar.update(len(batch))
        bar.close()
    computed = len(todo) - sum(1 for i in todo if i in failed)
    seconds = time.perf_counter() - t0
    timings["decode_and_forward_s"] = seconds - timings["keying_s"] - timings["cache_write_s"]
    return EmbedResult(
        out,
        failed,
        cached=len(plan.hits),
        computed=computed,
        seconds=seconds,
        hashed=plan.hashed,
        timings={k: round(v, 3) for k, v in timings.items()},
    )


def embed_texts(
    texts: list[str], encoder: TextEncoder, cache_root: Path, progress: bool = True, chunk: int = 2048
) -> np.ndarray:
    cache = EmbeddingCache(cache_root, "text", encoder.fingerprint(), encoder.dim)
    keys = [text_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    for s in tqdm(
        range(0, len(missing), chunk),
        desc=f"embedding texts ({encoder.name})",
        unit="chunk",
        disable=not progress or not missing,
    ):
        part = missing[s : s + chunk]
        cache.put([k for k, _ in part], encoder.encode([t for _, t in part]))
    return cache.get(keys) if keys else np.zeros((0, encoder.dim), np.float32)
