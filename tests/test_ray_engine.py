"""The Ray engine on a real local Ray (2 CPUs, started once for the module) over real fashion products:
the same vectors and the same store as the local path, a job goes on when an actor crashes and, killed
midway, resumes from the cache, bad images are counted by reason, and an unreachable cluster fails in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import FASHION, every_nth_product
from store_servers import pg_url

from lookalike.catalogue.schema import ImageRef
from lookalike.cli import main
from lookalike.config import EncoderConfig
from lookalike.distributed.ray_engine import embed_images_ray
from lookalike.encoders.efficientnet import default_cache_dir
from lookalike.encoders.embedder import embed_images
from lookalike.encoders.registry import image_encoder_for
from lookalike.errors import LookalikeError

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]

SMALL = EncoderConfig(image_size=(64, 48))  # ONNX Runtime, as by default; small images keep the test cheap


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the whole module (starting one costs seconds); the engine reuses it."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def onnx_dir() -> Path:
    """The small model's ONNX export in the run's shared cache (exported once per test run); every cache
    of this module links to it."""
    root = default_cache_dir()
    image_encoder_for(SMALL, root).forward(np.zeros((1, 64, 48, 3), np.uint8))
    return root / "onnx"


def fresh_cache(tmp_path: Path, name: str, onnx_dir: Path) -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "onnx").symlink_to(onnx_dir)
    return root


@pytest.fixture(scope="module")
def catalog200(tmp_path_factory) -> Path:
    """Every 200th real product (about 200), same layout as fashion-products."""
    out = tmp_path_factory.mktemp("fashion-200") / "catalog"
    every_nth_product(out, 200)
    return out


def cached(root: Path, cfg: EncoderConfig) -> dict[str, np.ndarray]:
    """Everything the cache's shards on disk hold for the encoder, by key."""
    out: dict[str, np.ndarray] = {}
    for shard in (root / f"image-{image_encoder_for(cfg, root).fingerprint()}").glob("shard-*.npz"):
        with np.load(shard) as z:
            out.update(zip(z["keys"].tolist(), z["vectors"]))
    return out


def _kill_an_embedding_actor() -> None:
    """SIGKILL the newest Ray Data encoder actor on this test's Ray (its workers descend from this process)."""
    import psutil

    actors = [p for p in psutil.Process().children(recursive=True) if p.cmdline()[:1] and "MapWorker" in p.cmdline()[0]]
    assert actors, "no encoder actor to kill"
    os.kill(max(actors, key=lambda p: p.create_time()).pid, signal.SIGKILL)


def _until(done, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_ray_vectors_equal_local_and_bad_images_are_counted(ray_address, onnx_dir, tmp_path):
    n = 48  # six batches of eight
    images = sorted((FASHION / "images").glob("1*.jpg"))[:n]
    (tmp_path / "corrupt.jpg").write_bytes(images[0].read_bytes()[:200])  # a truncated copy of a real photo
    refs = [ImageRef(p) for p in images] + [
        ImageRef(tmp_path / "corrupt.jpg"),
        ImageRef(tmp_path / "gone.jpg"),
        ImageRef(images[1], (0, 0, 30, 40)),
    ]
    local_root, ray_root = fresh_cache(tmp_path, "local", onnx_dir), fresh_cache(tmp_path, "ray", onnx_dir)
    local = embed_images(refs, image_encoder_for(SMALL, local_root), local_root, progress=False)
    res = embed_images_ray(refs, SMALL, ray_root, batch_size=8, shard_size=4)
    assert res.failed == local.failed == {n: "corrupt image", n + 1: "missing image"}
    assert (res.cached, res.computed) == (0, n + 1)
    assert np.abs(res.vectors - local.vectors).max() <= 1e-5
    assert np.abs(res.vectors[n + 2] - res.vectors[1]).max() > 1e-3  # the crop is its own image
    a, b = cached(local_root, SMALL), cached(ray_root, SMALL)
    assert sorted(a) == sorted(b) and len(a) > n - 5  # duplicate photos share a key
    assert max(np.abs(a[k] - b[k]).max() for k in a) <= 1e-5
    good = refs[:n] + refs[n + 2 :]  # without the bad images, which a rerun tries again: everything is cached
    again = embed_images_ray(good, SMALL, ray_root)
    assert (again.cached, again.computed, again.failed) == (n + 1, 0, {})
    assert np.array_equal(again.vectors, res.vectors[[*range(n), n + 2]])


@pytest.fixture(scope="module")
def checkpoint(catalog200, tmp_path_factory) -> str:
    """A real checkpoint of an untrained model over the catalogue's schema: ingest stores frozen image
    vectors through the checkpoint's (here: identity) projection, so training would only cost time."""
    from lookalike.catalogue import load_catalogue
    from lookalike.config import RunConfig
    from lookalike.encoders.projection import ImageSpace
    from lookalike.model import create_model
    from lookalike.towers import AttributeVocab

    cat = load_catalogue(str(catalog200))
    cfg = RunConfig.model_validate({"encoder": {**SMALL.model_dump(), "projection": "none"}})
    vocab = AttributeVocab.build([p.attributes for p in cat.products], cat.schema.single_fields, cat.schema.list_fields)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    create_model(cfg, vocab, ImageSpace("none"), 1280, 512).save(path, schema=cat.schema.model_dump())
    return str(path)


def _store(url: str) -> dict:
    from lookalike.retrieval.stores import open_store

    with open_store(url) as s:
        ids, vectors, metadata = s.items()
    return {"ids": ids, "vectors": vectors, "metadata": metadata}


def _counts(text: str) -> tuple[int, int, int]:
    m = re.search(r"cache hits (\d+), new embeddings (\d+), skipped (\d+)", text)
    assert m, text
    return int(m[1]), int(m[2]), int(m[3])


def test_a_killed_job_resumes_and_ray_ingest_stores_exactly_the_catalogue(
    ray_address, onnx_dir, catalog200, checkpoint, tmp_path, capsys
):
    """`embed --engine ray` loses its actor (SIGKILL) after its first cache shard, goes on (Ray restarts the
    actor and retries its batch), and is itself killed a few shards later; `catalog ingest --engine ray`
    then embeds only what is missing, into an embedded store and into pgvector, equal to a local ingest."""
    ray_cache = fresh_cache(tmp_path, "ray-cache", onnx_dir)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"encoder": SMALL.model_dump()}))
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lookalike.cli",
            "embed",
            "--catalog",
            str(catalog200),
            "--config",
            str(cfg),
            "--cache-dir",
            str(ray_cache),
            "--engine",
            "ray",
            "--address",
            ray_address,
            "--num-actors",
            "1",
            "--batch-size",
            "4",
            "--shard-size",
            "4",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def shards() -> int:
        return len(list(ray_cache.glob("image-*/shard-*.npz")))

    _until(lambda: shards() or job.poll() is not None)
    assert job.poll() is None, job.stdout.read().decode()
    first = shards()
    _kill_an_embedding_actor()  # a crash while the job runs: it has about 190 images to go
    _until(lambda: shards() > first + 3 or job.poll() is not None)  # more than what was in flight: it went on
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    assert job.returncode == -signal.SIGKILL, job.stdout.read().decode()  # killed, not finished

    args = ["catalog", "ingest", "--model", checkpoint, "--catalog", str(catalog200), "--no-progress"]
    main(
        [
            *args,
            "--store",
            f"embedded://{tmp_path / 'ray'}",
            "--engine",
            "ray",
            "--address",
            ray_address,
            "--num-actors",
            "1",
            "--batch-size",
            "32",
            "--cache-dir",
            str(ray_cache),
        ]
    )
    out = capsys.readouterr()
    hits, new, skipped = _counts(out.err)  # notes on stderr; stdout holds the JSON report alone
    total = int(re.search(r"loaded (\d+) products", out.err)[1])
    # Ray tells every driver on the cluster that a worker died (the actor killed above), and this test process
    # is a driver too: such a line may land in the captured stdout, from Ray, not from the command.
    ours = [line for line in out.out.splitlines() if not line.startswith("(raylet)")]
    assert json.loads("\n".join(ours))["ingested"] == total
    assert hits > 0 and new > 0 and hits + new == total > 150 and skipped == 0, out
    assert not list(ray_cache.glob("image-*/*.tmp*"))  # no half-written shard
    pg = pg_url("ray_ingest")
    main([*args, "--store", pg, "--engine", "ray", "--cache-dir", str(ray_cache)])
    assert _counts(capsys.readouterr().err) == (total, 0, 0)  # warm: the cache answers, Ray is not started
    local_cache = fresh_cache(tmp_path, "local-cache", onnx_dir)
    main([*args, "--store", f"embedded://{tmp_path / 'local'}", "--cache-dir", str(local_cache)])
    assert _counts(capsys.readouterr().err) == (0, total, 0)

    a, b = cached(local_cache, SMALL), cached(ray_cache, SMALL)
    assert sorted(a) == sorted(b) and max(np.abs(a[k] - b[k]).max() for k in a) <= 1e-5
    local, ray_emb, ray_pg = (
        _store(f"embedded://{tmp_path / 'local'}"),
        _store(f"embedded://{tmp_path / 'ray'}"),
        _store(pg),
    )
    assert len(local["ids"]) == total
    for other in (ray_emb, ray_pg):
        assert other["ids"] == local["ids"] and other["metadata"] == local["metadata"]
        assert np.abs(other["vectors"] - local["vectors"]).max() <= 1e-5


def test_default_pool_is_one_single_threaded_actor_per_cpu(ray_address):
    """Two actors of one thread on 2 CPUs, not one of two: single-threaded sessions cost less CPU per image
    (benchmarks/scale.py prints both pools); asked for fewer actors, they share the CPUs."""
    import ray

    from lookalike.distributed.ray_engine import _pool

    assert _pool(ray, None) == (2, 1)
    assert _pool(ray, 1) == (1, 2)


def test_unreachable_cluster_and_misplaced_options_fail_in_one_line(ray_address, tmp_path, capsys):
    with pytest.raises(LookalikeError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1: "):
        embed_images_ray([ImageRef(tmp_path / "x.jpg")], SMALL, tmp_path, address="127.0.0.1:1")
    for extra, message in (
        (["--engine", "ray", "--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
        (["--address", "127.0.0.1:1"], "--address, --num-actors and --num-cpus need --engine ray"),
        (["--engine", "ray", "--address", "nowhere"], "Ray address 'nowhere' must be host:port"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["embed", "--catalog", str(tmp_path / "none"), "--cache-dir", str(tmp_path), "--no-progress", *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and message in err and err.startswith("lookalike: error: ")
