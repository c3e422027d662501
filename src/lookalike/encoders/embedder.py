"""Batch embedding of catalogue images and texts through a frozen encoder, with the cache in front.

Every image is first keyed (a stat when `FileKeys` knows the file, else a read and a hash); those
not in the cache are then decoded and preprocessed on a thread pool (PIL releases the GIL) while the
encoder runs the previous batch, so the embedder keeps close to the bare forward pass's throughput.
A missing or undecodable image is reported by index and reason; it never stops the run.
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


def _read(ref: ImageRef, keys: FileKeys) -> tuple[str | None, bytes | None, str | None]:
    """(cache key, bytes or None when the key was known from the file's stat, error)."""
    path = str(ref.path)
    try:
        st = os.stat(path)  # before the read: a file changed after it gets a new mtime, so a stale entry never matches
        known = keys.lookup(path, st)
        if known is not None:
            return known + ref.cache_suffix(), None, None
        data = ref.path.read_bytes()
    except OSError:
        return None, None, "missing image"
    key = bytes_key(data)
    keys.remember(path, st, key)
    return key + ref.cache_suffix(), data, None


def _decode(encoder: ImageEncoder, ref: ImageRef, data: bytes | None) -> np.ndarray | str:
    try:
        if data is None:
            data = ref.path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if ref.box is not None:
                im = im.crop(ref.box)
            return encoder.preprocess(im)
    except FileNotFoundError:
        return "missing image"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "corrupt image"


def embed_images(refs: list[ImageRef], encoder: ImageEncoder, cache_root: Path, batch_size: int = 64,
                 workers: int = 1, progress: bool = True, flush_every: int = 8192) -> EmbedResult:
    import time

    t0 = time.perf_counter()
    cache = EmbeddingCache(cache_root, "image", encoder.fingerprint(), encoder.dim)
    keys = FileKeys(Path(cache_root))
    out = np.zeros((len(refs), encoder.dim), np.float32)
    failed: dict[int, str] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reads = [_read(ref, keys) for ref in refs]  # mostly stat calls once the files are known
        hashed = sum(1 for _, data, _ in reads if data is not None)
        todo: list[int] = []
        hit_idx, hit_keys = [], []
        for i, (key, _, err) in enumerate(reads):
            if err:
                failed[i] = err
            elif key in cache:
                hit_idx.append(i)
                hit_keys.append(key)
            else:
                todo.append(i)
        if hit_idx:
            out[hit_idx] = cache.get(hit_keys)
        batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]

        def prepare(batch: list[int]):
            return [pool.submit(_decode, encoder, refs[i], reads[i][1]) for i in batch]

        bar = tqdm(total=len(todo), desc=f"embedding images ({encoder.name})", unit="img", disable=not progress or not todo)
        pending = prepare(batches[0]) if batches else []
        new_idx: list[int] = []
        for b, batch in enumerate(batches):
            arrays = [f.result() for f in pending]
            pending = prepare(batches[b + 1]) if b + 1 < len(batches) else []
            ok = [(i, a) for i, a in zip(batch, arrays) if not isinstance(a, str)]
            for i, a in zip(batch, arrays):
                if isinstance(a, str):
                    failed[i] = a
            by_shape: dict[tuple, list[tuple[int, np.ndarray]]] = {}
            for i, a in ok:
                by_shape.setdefault(a.shape, []).append((i, a))
            for group in by_shape.values():
                idx = [i for i, _ in group]
                vecs = encoder.forward(np.stack([a for _, a in group]))
                out[idx] = vecs
                new_idx.extend(idx)
            if len(new_idx) >= flush_every or b + 1 == len(batches):
                cache.put([reads[i][0] for i in new_idx], out[new_idx])
                new_idx = []
            for i in batch:
                reads[i] = (reads[i][0], None, None)  # free the bytes
            bar.update(len(batch))
        bar.close()
    keys.save()
    computed = len(todo) - sum(1 for i in todo if i in failed)
    return EmbedResult(out, failed, cached=len(hit_idx), computed=computed, seconds=time.perf_counter() - t0,
                       hashed=hashed)


def embed_texts(texts: list[str], encoder: TextEncoder, cache_root: Path, progress: bool = True,
                chunk: int = 2048) -> np.ndarray:
    cache = EmbeddingCache(cache_root, "text", encoder.fingerprint(), encoder.dim)
    keys = [text_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
    for s in tqdm(range(0, len(missing), chunk), desc=f"embedding texts ({encoder.name})", unit="chunk",
                  disable=not progress or not missing):
        part = missing[s:s + chunk]
        cache.put([k for k, _ in part], encoder.encode([t for _, t in part]))
    return cache.get(keys) if keys else np.zeros((0, encoder.dim), np.float32)
