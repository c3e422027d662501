"""HF CLIP / SigLIP image encoders on tiny randomly initialised models saved locally (no hub, no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike.encoders.registry import create_image_encoder, list_models
from lookalike.errors import LookalikeError

VISION = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
}
TEXT = {
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 16,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}


def _image_processor(kind: str):
    import transformers

    # transformers 5 without torchvision falls back to the PIL backend (with a warning); name it directly.
    if kind == "clip":
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return cls(size={"height": 32, "width": 32})


def _save(kind: str, directory, seed: int):
    from transformers import (
        CLIPConfig,
        CLIPModel,
        SiglipConfig,
        SiglipModel,
    )  # 2-3 s: only on the worker that runs these

    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16))
    else:
        model = SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT))
    model.save_pretrained(directory)
    processor = _image_processor(kind)
    processor.save_pretrained(directory)
    return model.eval(), processor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_clip")
    out = {}
    for kind in ("clip", "siglip"):
        d = root / kind
        model, processor = _save(kind, d, seed=0)
        out[kind] = {
            "dir": str(d),
            "model": model,
            "processor": processor,
            "encoder": create_image_encoder("hf:" + str(d)),
        }
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    sizes = [(50, 40), (40, 50), (32, 32), (97, 23), (20, 64)]  # (width, height): wide, tall, exact, small
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    rgba = rng.integers(0, 256, (36, 44, 4), dtype=np.uint8)
    ims.append(Image.fromarray(rgba, "RGBA"))  # transparency composited onto white, as transformers does
    ims.append(Image.fromarray(rng.integers(0, 256, (45, 33), dtype=np.uint8), "L"))
    return ims


def _hf_pixels(processor, ims) -> np.ndarray:
    return np.asarray(processor(images=ims, return_tensors="np")["pixel_values"], dtype=np.float32)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_loads_and_encodes_shape_dtype(tiny, images, kind):
    enc = tiny[kind]["encoder"]
    assert enc.dim == (16 if kind == "clip" else 32)
    x = np.stack([enc.preprocess(im) for im in images])
    assert x.shape == (len(images), 3, 32, 32) and x.dtype == np.float32
    feats = enc.encode_images(images)
    assert feats.shape == (len(images), enc.dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_encoding_leaves_the_process_thread_count_alone(tiny, images, kind):
    """torch's thread count is process-wide: an encoder running on its own count puts the caller's back."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a count no encoder here asks for
    try:
        enc = create_image_encoder("hf:" + tiny[kind]["dir"], threads=1)
        assert torch.get_num_threads() == 3  # loading measured nothing on other threads either
        enc.encode_images(images)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_preprocess_matches_hf_processor(tiny, images, kind):
    enc, processor = tiny[kind]["encoder"], tiny[kind]["processor"]
    ours = np.stack([enc.preprocess(im) for im in images])
    ref = _hf_pixels(processor, images)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-2)


def test_clip_features_match_get_image_features(tiny, images):
    enc, model, processor = tiny["clip"]["encoder"], tiny["clip"]["model"], tiny["clip"]["processor"]
    pixels = _hf_pixels(processor, images)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        ref = (ref if torch.is_tensor(ref) else ref.pooler_output).numpy()
    np.testing.assert_allclose(enc.forward(pixels), ref, atol=1e-4)
    # and end to end from PIL images, through our own preprocessing
    np.testing.assert_allclose(enc.encode_images(images), ref, atol=1e-3)


def test_siglip_features_match_get_image_features(tiny, images):
    enc, model, processor = tiny["siglip"]["encoder"], tiny["siglip"]["model"], tiny["siglip"]["processor"]
    pixels = _hf_pixels(processor, images)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        ref = (ref if torch.is_tensor(ref) else ref.pooler_output).numpy()
    np.testing.assert_allclose(enc.forward(pixels), ref, atol=1e-4)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_weights_frozen_and_eval(tiny, kind):
    enc = tiny[kind]["encoder"]
    modules = enc.torch_modules()
    assert modules
    for m in modules:
        assert not m.training
        assert all(not mod.training for mod in m.modules())
        params = list(m.parameters())
        assert params and all(not p.requires_grad for p in params)


def test_config_and_fingerprint(tiny, tmp_path):
    enc = tiny["clip"]["encoder"]
    cfg = enc.config()
    assert cfg["source"] == tiny["clip"]["dir"]
    assert cfg["input_size"] == (32, 32)
    assert cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    fp = enc.fingerprint()
    assert fp == create_image_encoder("hf:" + tiny["clip"]["dir"]).fingerprint()  # stable across loads

    # other weights in another directory
    other = tmp_path / "other"
    _save("clip", other, seed=1)
    enc2 = create_image_encoder("hf:" + str(other))
    assert enc2.fingerprint() != fp
    assert not np.allclose(
        enc2.forward(np.zeros((1, 3, 32, 32), np.float32)), enc.forward(np.zeros((1, 3, 32, 32), np.float32))
    )

    # the same directory re-saved with new weights
    _save("clip", other, seed=2)
    assert create_image_encoder("hf:" + str(other)).fingerprint() != enc2.fingerprint()


def test_fingerprint_follows_the_weights_when_their_files_cannot_be_found(tmp_path, monkeypatch):
    """A hub model (here in a local hub cache) whose weight files cannot be located for the fingerprint (our
    lookup fails; transformers' own loading does not) is fingerprinted by its loaded weights: new weights
    under the same name change it."""
    import sys

    import transformers.utils
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--lookalike-test--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("0" * 40)

    real_lookup = transformers.utils.cached_file

    def lookup_fails_for_lookalike(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") == "lookalike.encoders.clip":
            raise OSError("simulated: the hub cache cannot be read")
        return real_lookup(*args, **kwargs)

    monkeypatch.setattr(transformers.utils, "cached_file", lookup_fails_for_lookalike)
    fingerprints = []
    for seed in (1, 2):
        _save("clip", repo / "snapshots" / ("0" * 40), seed=seed)
        fingerprints.append(create_image_encoder("hf:lookalike-test/tiny-clip", local_files_only=True).fingerprint())
    assert fingerprints[0] != fingerprints[1]
    again = create_image_encoder("hf:lookalike-test/tiny-clip", local_files_only=True)
    assert again.fingerprint() == fingerprints[1]  # and stable while the weights stay


def test_missing_directory_raises(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(LookalikeError, match="no_such_model") as info:
        create_image_encoder("hf:" + str(missing))
    assert str(missing) in str(info.value)


def test_unknown_option_raises(tiny):
    with pytest.raises(LookalikeError, match="devise"):
        create_image_encoder("hf:" + tiny["clip"]["dir"], devise="cpu")


def test_openclip_source_needs_pretrained():
    with pytest.raises(LookalikeError, match="pretrained"):
        create_image_encoder("openclip:ViT-B-32")


def test_registry_lists_named_models():
    specs = {s.name: s for s in list_models("image")}
    assert specs["fashion-clip"].source == "patrickjohncyh/fashion-clip"
    assert specs["fashion-clip"].family == "hf-clip"
    assert specs["siglip-base"].family == "hf-clip"
    assert specs["openclip-vit-b32"].family == "openclip"
    assert specs["openclip-vit-b32"].source == "ViT-B-32/laion2b_s34b_b79k"


def test_missing_transformers_raises_install_hint(tiny, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers → ImportError
    with pytest.raises(LookalikeError, match=r"pip install 'lookalike\[clip\]'"):
        create_image_encoder("hf:" + tiny["clip"]["dir"])


class _FakeOpenClipModel(torch.nn.Module):
    """Stands in for an open_clip CLIP model: `visual.preprocess_cfg` and `encode_image`."""

    def __init__(self, resize_mode):
        super().__init__()
        self.visual = torch.nn.Linear(3, 8)
        self.visual.output_dim = 8
        self.visual.preprocess_cfg = {
            "size": (24, 24),
            "mode": "RGB",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "interpolation": "bicubic",
            "resize_mode": resize_mode,
            "fill_color": 0,
        }

    def encode_image(self, x):
        return self.visual(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_openclip_encoder_with_fake_open_clip(monkeypatch, tmp_path, images, resize_mode):
    import types

    calls = []
    fake = types.ModuleType("open_clip")
    fake.__version__ = "0.0-test"

    def create_model_and_transforms(name, pretrained=None, **kw):
        calls.append((name, pretrained, kw))
        return _FakeOpenClipModel(resize_mode), None, None

    fake.create_model_and_transforms = create_model_and_transforms
    monkeypatch.setitem(__import__("sys").modules, "open_clip", fake)

    enc = create_image_encoder("openclip-vit-b32")
    assert calls[-1][:2] == ("ViT-B-32", "laion2b_s34b_b79k")
    assert enc.dim == 8 and enc.input_size == (24, 24)
    x = np.stack([enc.preprocess(im) for im in images])
    assert x.shape == (len(images), 3, 24, 24) and x.dtype == np.float32
    feats = enc.encode_images(images)
    assert feats.shape == (len(images), 8) and feats.dtype == np.float32
    assert all(not p.requires_grad for p in enc.torch_modules()[0].parameters())
    assert not enc.torch_modules()[0].training

    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"x")
    enc_file = create_image_encoder(f"openclip:ViT-B-32/{ckpt}")
    assert calls[-1][:2] == ("ViT-B-32", str(ckpt))
    fp = enc_file.fingerprint()
    assert fp != enc.fingerprint()
    ckpt.write_bytes(b"yy")
    assert create_image_encoder(f"openclip:ViT-B-32/{ckpt}").fingerprint() != fp
    with pytest.raises(LookalikeError, match="not found"):
        create_image_encoder(f"openclip:ViT-B-32/{tmp_path / 'nope.bin'}")


def test_unreadable_processor_size_is_a_clear_error(tiny, tmp_path):
    """A preprocessor_config.json whose size is neither a number, a pair nor an object is named in the error
    (it used to fail with AttributeError: 'str' object has no attribute 'get')."""
    import json
    import shutil

    d = tmp_path / "odd-size"
    shutil.copytree(tiny["clip"]["dir"], d)
    cfg = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps({**cfg, "size": "large"}))
    with pytest.raises(LookalikeError, match="unsupported image-processor size 'large'"):
        create_image_encoder("hf:" + str(d))
