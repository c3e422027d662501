"""HF CLIP / SigLIP and OpenCLIP image encoders on tiny randomly initialised models saved locally (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lookalike
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


# OpenCLIP runs in a subprocess: open_clip imports torchvision, which lives with it in a folder of its own that only
# that process sees (./run's setup says why). The probe builds tiny random OpenCLIP models, loads them through
# lookalike and prints what it measured; the tests below check it.
OPENCLIP_DIR = Path(sys.prefix) / "openclip"
# Each case the probe measured: (the resize mode its config declares, the input size (height, width)).
OPENCLIP_CASES = {
    "file": ("shortest", [32, 32]),  # openclip:<arch>/<checkpoint file>, open_clip's default preprocessing
    "file_new_weights": ("shortest", [32, 32]),
    "longest": ("longest", [32, 32]),  # openclip:local-dir:<folder>, with its open_clip_config.json
    "longest_new_weights": ("longest", [32, 32]),
    "squash": ("squash", [32, 32]),
    "shortest-32x24": ("shortest", [32, 24]),
    "hub": ("shortest", [32, 32]),  # openclip:hf-hub:<org>/<name>, from the hub cache, offline
    "hub_new_weights": ("shortest", [32, 32]),
}


@pytest.fixture(scope="module")
def openclip_probe(tmp_path_factory, images) -> dict:
    assert (OPENCLIP_DIR / "open_clip").is_dir(), (
        f"open_clip is expected in {OPENCLIP_DIR}, beside the virtualenv's site-packages: ./run test installs it there"
    )
    work = tmp_path_factory.mktemp("openclip")
    (work / "images").mkdir()
    for i, im in enumerate(images):
        im.save(work / "images" / f"{i}.png")
    src = Path(lookalike.__file__).resolve().parents[1]  # the lookalike these tests import
    path = [str(OPENCLIP_DIR), str(src), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "hub")}
    probe = Path(__file__).with_name("openclip_probe.py")
    proc = subprocess.run(
        [sys.executable, str(probe), str(work)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"{probe.name} failed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout)


def test_openclip_runs_on_our_torch(openclip_probe):
    assert openclip_probe["torch"] == torch.__version__


@pytest.mark.parametrize("case", OPENCLIP_CASES)
def test_openclip_image_tower_is_frozen(openclip_probe, case):
    m = openclip_probe[case]
    assert m["params"] > 0
    assert m["params_requiring_grad"] == 0
    assert m["modules_in_training_mode"] == 0


@pytest.mark.parametrize("case", OPENCLIP_CASES)
def test_openclip_loads_the_saved_weights(openclip_probe, images, case):
    m = openclip_probe[case]
    assert m["weights_equal_saved"]
    assert m["dim"] == 16  # the config's embed_dim
    assert m["input_size"] == OPENCLIP_CASES[case][1]
    plain = sum(im.mode in ("RGB", "L") for im in images)
    assert m["preprocess_shape"] == [plain, 3, *OPENCLIP_CASES[case][1]] and m["preprocess_dtype"] == "float32"
    assert m["features_shape"] == [plain, 16] and m["features_dtype"] == "float32"


@pytest.mark.parametrize("case", OPENCLIP_CASES)
def test_openclip_preprocessing_is_the_models_own(openclip_probe, case):
    """lookalike reads the preprocessing open_clip set on the model (visual.preprocess_cfg), and each case really
    declares the resize mode it stands for."""
    m = openclip_probe[case]
    theirs = m["open_clip_preprocess_cfg"]
    assert theirs["resize_mode"] == OPENCLIP_CASES[case][0]
    assert m["config"]["resize_mode"] == theirs["resize_mode"]
    assert m["config"]["interpolation"] == theirs["interpolation"]
    assert m["config"]["fill_color"] == theirs["fill_color"]
    assert m["config"]["mean"] == pytest.approx(theirs["mean"])
    assert m["config"]["std"] == pytest.approx(theirs["std"])


@pytest.mark.parametrize("case", OPENCLIP_CASES)
def test_openclip_features_match_open_clips_own(openclip_probe, case):
    """encode_images = open_clip's model.encode_image(preprocess(image)), for RGB and grey images."""
    m = openclip_probe[case]
    assert m["pixels_max_diff"] < 1e-5
    assert m["features_max_diff"] < 1e-5 * max(1.0, m["features_max_abs"])
    assert m["features_spread"] > 1e-2  # different images, different vectors


@pytest.mark.parametrize("case", OPENCLIP_CASES)
def test_openclip_composites_transparency_onto_white(openclip_probe, case):
    """open_clip drops the alpha channel; lookalike composites onto white first (as for HF models): its pixels are
    open_clip's preprocess of the image composited onto white."""
    assert openclip_probe[case]["transparent_pixels_max_diff_vs_white"] < 1e-5


def test_openclip_fingerprint_follows_the_weights(openclip_probe):
    p = openclip_probe
    fp = {case: p[case]["fingerprint"] for case in OPENCLIP_CASES}
    assert len(set(fp.values())) == len(fp)  # new weights, another preprocessing, another source: another key
    assert p["file_again_fingerprint"] == fp["file"]  # loaded again, unchanged
    assert p["longest_rewritten_fingerprint"] == fp["longest"]  # the same weights written again (new mtime)


def test_openclip_leaves_the_thread_count_alone(openclip_probe):
    threads = openclip_probe["threads"]
    assert threads["after_load"] == threads["set"]
    assert threads["after_encode"] == threads["set"]


def test_openclip_bad_sources_are_clear_errors(openclip_probe):
    errors = openclip_probe["errors"]
    assert errors["missing_file"] is not None and "checkpoint file not found" in errors["missing_file"]
    assert errors["missing_file"].endswith("nope.pt")
    assert errors["unknown_arch"] is not None and "could not load OpenCLIP model" in errors["unknown_arch"]
    assert "no-such-arch" in errors["unknown_arch"]


def test_missing_open_clip_raises_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip → ImportError
    with pytest.raises(LookalikeError, match=r"pip install open_clip_torch, or, .* put the \.venv/openclip folder"):
        create_image_encoder("openclip:ViT-B-32/laion2b_s34b_b79k")


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


def test_half_precision_is_keyed_apart_and_close_to_fp32(tiny, images, tmp_path):
    """On a GPU the HF encoders run in half precision (encoders/registry.py); bf16 runs on the CPU too, so the
    dtype path is checked here: other vectors, another cache fingerprint, close to the fp32 ones."""
    from lookalike.config import EncoderConfig
    from lookalike.encoders.registry import image_encoder_for

    full = tiny["clip"]["encoder"]
    half = create_image_encoder("hf:" + tiny["clip"]["dir"], precision="bf16")
    assert half.fingerprint() != full.fingerprint()
    a, b = full.encode_images(images), half.encode_images(images)
    assert b.dtype == np.float32 and not np.array_equal(a, b)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98
    on_cpu = image_encoder_for(EncoderConfig(image_model="hf:" + tiny["clip"]["dir"], device="cpu"), tmp_path)
    assert on_cpu.fingerprint() == full.fingerprint()  # the CPU keeps fp32: the cache stays shared
    with pytest.raises(LookalikeError, match="precision must be"):
        create_image_encoder("hf:" + tiny["clip"]["dir"], precision="fp8")
