"""Embed catalogue images on a Ray cluster with Ray Data, into the same cache as the local embedder.

The driver keys every image exactly as the local path does (`plan_images`: content SHA-1 + crop
suffix under the encoder's fingerprint) and sends to Ray only the images the cache lacks, as a
dataset of (index, path, crop) rows. `map_batches` runs them through a pool of actors, each loading
the frozen encoder once with as many inference threads as it has CPUs (by default one actor per CPU:
see `_pool`). Vectors stream back to the driver (`iter_batches`) and are written to the cache as they
arrive, a shard every `shard_size` new vectors or `FLUSH_S` seconds; a shard is written under a
temporary name and renamed, so a job killed midway loses only what was in flight, and a rerun embeds
only what is missing.

A missing or corrupt image is counted by reason (the local path's reasons). An actor that dies is
restarted and its batch retried by Ray (`max_restarts`, `max_task_retries`); a batch that still fails
is dropped by Ray Data (`max_errored_blocks`) and its products are counted as "actor crashed".

Image paths must be readable from every node of the cluster (a shared filesystem), as for any Ray
Data job reading files. Ray is imported only here, and only when this engine is used.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from lookalike.catalogue.schema import ImageRef
from lookalike.distributed import NEEDS_RAY
from lookalike.encoders.cache import EmbeddingCache, FileKeys
from lookalike.encoders.embedder import (
    ACTOR_CRASHED,
    EmbedResult,
    cache_keys,
    forward_grouped,
    load_pixels,
    plan_images,
)
from lookalike.encoders.registry import image_encoder_for
from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    from lookalike.config import EncoderConfig

FLUSH_S = 30.0  # at most this much finished work is lost when the driver is killed between shards
MAX_RESTARTS = 2  # per actor; Ray's default (-1: forever) would retry a batch that kills its actor forever
MAX_TASK_RETRIES = 2


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise LookalikeError(NEEDS_RAY) from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in one line, at once, when nothing listens at host:port (Ray itself retries for about a minute)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LookalikeError(f"Ray address {address!r} must be host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise LookalikeError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at `address`, or start a local Ray on `num_cpus` cores (default: all of them).
    Reuses a Ray this process already connected to. True when this call connected (so it disconnects)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    try:
        ray.init(
            address=address,
            num_cpus=None if address else (num_cpus or os.cpu_count()),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise LookalikeError(
            f"cannot start or join {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    return True


def _box_text(box: tuple[int, int, int, int] | None) -> str:
    """A crop box as a row field ("" for none), read back by `_parse_box`."""
    return ",".join(map(str, box)) if box else ""


def _parse_box(text: str) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    left, top, right, bottom = (int(x) for x in text.split(","))
    return (left, top, right, bottom)


class _EmbedActor:
    """One encoder per actor, loaded once; a batch of rows → vectors and failure reasons."""

    def __init__(self, encoder_config: dict, cache_root: str, threads: int):
        from lookalike.config import EncoderConfig

        self.encoder = image_encoder_for(EncoderConfig.model_validate(encoder_config), Path(cache_root), threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        refs = [ImageRef(Path(p), _parse_box(b)) for p, b in zip(batch["path"], batch["box"])]
        arrays = [load_pixels(self.encoder, ref) for ref in refs]
        ok = [j for j, a in enumerate(arrays) if not isinstance(a, str)]
        vectors = np.zeros((len(refs), self.encoder.dim), np.float32)
        if ok:
            vectors[ok] = forward_grouped(self.encoder, [a for a in arrays if not isinstance(a, str)])
        errors = np.array([a if isinstance(a, str) else "" for a in arrays], dtype=object)
        return {"i": np.asarray(batch["i"], np.int64), "vector": vectors, "error": errors}


def _pool(ray, num_actors: int | None) -> tuple[int, int]:
    """(actors, CPUs per actor): one actor of one inference thread per CPU by default, else the cluster's
    CPUs shared among them (never more than one node holds). Single-threaded sessions cost less CPU per
    image than one session with a thread per CPU; every actor also costs a worker process that imports
    Ray, Ray Data and the encoder on every job, which only short jobs notice (benchmarks/scale.py prints
    both pools)."""
    total = int(ray.cluster_resources().get("CPU", 1))
    if not num_actors:
        return max(1, total), 1
    per_node = max([int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n.get("Alive")] or [1])
    return num_actors, max(1, min(total // num_actors, per_node))


def embed_images_ray(
    refs: list[ImageRef],
    encoder_config: EncoderConfig,
    cache_root: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_actors: int | None = None,
    batch_size: int = 64,
    shard_size: int = 4096,
    progress: bool = False,
) -> EmbedResult:
    """Vectors of every image (rows of failed ones are zero), as `embed_images` returns them, computed on
    Ray for the images the cache lacks. `num_cpus` sizes a local Ray (ignored with `address`)."""
    t0 = time.perf_counter()
    if batch_size < 1 or shard_size < 1 or (num_actors is not None and num_actors < 1):
        raise LookalikeError("batch size, shard size and number of actors must be positive")
    if address:
        check_reachable(address)  # before minutes of keying, not after
    root = Path(cache_root)
    encoder = image_encoder_for(encoder_config, root)  # on the driver: fingerprint and dim only, no weights run
    cache = EmbeddingCache(root, "image", encoder.fingerprint(), encoder.dim)
    plan = plan_images(refs, cache, FileKeys(root), keep_bytes=False)  # actors read the files themselves
    timings = {"keying_s": time.perf_counter() - t0}
    out = np.zeros((len(refs), encoder.dim), np.float32)
    if plan.hits:
        out[plan.hits] = cache.get(cache_keys(plan.keys, plan.hits))
    failed = dict(plan.failed)
    computed = 0
    if plan.todo:
        ray = _import_ray()
        started = connect(address, num_cpus)
        try:
            computed = _run(
                ray,
                refs,
                plan.todo,
                plan.keys,
                encoder_config,
                root,
                cache,
                out,
                failed,
                num_actors,
                batch_size,
                shard_size,
                progress,
                encoder.name,
                timings,
            )
        finally:
            if started:
                ray.shutdown()
    return EmbedResult(
        out,
        failed,
        cached=len(plan.hits),
        computed=computed,
        seconds=time.perf_counter() - t0,
        hashed=plan.hashed,
        timings={k: round(v, 3) for k, v in timings.items()},
    )


def _run(
    ray,
    refs: list[ImageRef],
    todo: list[int],
    keys: list[str | None],
    encoder_config: EncoderConfig,
    root: Path,
    cache: EmbeddingCache,
    out: np.ndarray,
    failed: dict[int, str],
    num_actors: int | None,
    batch_size: int,
    shard_size: int,
    progress: bool,
    name: str,
    timings: dict[str, float],
) -> int:
    """Embed `todo` on the actor pool, writing vectors into `out` and the cache as they arrive; `timings`
    gets when the first vectors arrived (the pool's start-up and one batch), the job's length and the
    driver's cache writes."""
    from ray.data import ActorPoolStrategy, DataContext

    t0 = time.perf_counter()
    timings["cache_write_s"] = 0.0

    actors, cpus = _pool(ray, num_actors)
    ctx = DataContext.get_current()
    saved = (ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.print_on_execution_start = -1, False, False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not "progress bars disabled"
    rows = [{"i": i, "path": str(refs[i].path), "box": _box_text(refs[i].box)} for i in todo]
    seen = np.zeros(len(refs), bool)
    computed = 0
    new: list[int] = []
    last_flush = time.monotonic()
    bar = tqdm(
        total=len(todo), desc=f"embedding images ({name}) on Ray, {actors} actors", unit="img", disable=not progress
    )
    try:
        with warnings.catch_warnings():  # 2.60 has no named parameter for the retry limits yet
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ray.data.from_items(
                rows, override_num_blocks=max(1, min(len(rows) // batch_size, 10_000))
            ).map_batches(
                _EmbedActor,
                batch_size=batch_size,
                compute=ActorPoolStrategy(size=actors),
                num_cpus=cpus,
                fn_constructor_kwargs={
                    "encoder_config": encoder_config.model_dump(),
                    "cache_root": str(root),
                    "threads": cpus,
                },
                max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_TASK_RETRIES,
            )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            timings.setdefault("first_vectors_s", time.perf_counter() - t0)
            idx, errors = batch["i"], batch["error"]
            seen[idx] = True
            good = errors == ""
            for i, reason in zip(idx[~good], errors[~good]):
                failed[int(i)] = str(reason)
            out[idx[good]] = batch["vector"][good]
            new.extend(idx[good].tolist())
            computed += int(good.sum())
            if len(new) >= shard_size or time.monotonic() - last_flush >= FLUSH_S:
                t = time.perf_counter()
                cache.put(cache_keys(keys, new), out[new])
                timings["cache_write_s"] += time.perf_counter() - t
                new, last_flush = [], time.monotonic()
            bar.update(len(idx))
    except LookalikeError:
        raise
    except Exception as e:  # Ray wraps what went wrong in its own errors; name it in one line
        raise LookalikeError(
            f"the Ray embedding job failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    finally:
        t = time.perf_counter()
        cache.put(cache_keys(keys, new), out[new])  # what arrived is kept, even when the job fails
        timings["cache_write_s"] += time.perf_counter() - t
        timings["ray_job_s"] = time.perf_counter() - t0
        bar.close()
        ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
    lost = [i for i in todo if not seen[i]]
    if lost and len(lost) == len(todo):
        raise LookalikeError(f"every embedding batch failed on Ray ({len(lost)} images); see the Ray logs")
    for i in lost:
        failed[i] = ACTOR_CRASHED
    return computed
