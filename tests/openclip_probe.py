"""Runs lookalike's OpenCLIP encoder on tiny randomly initialised OpenCLIP models and prints what it measured as JSON.

Run by tests/test_clip_encoders.py in a subprocess whose PYTHONPATH adds the folder holding open_clip and its
old torchvision (see ./run): the test process, and every other test, never import torchvision.

    python tests/openclip_probe.py WORKDIR   (WORKDIR holds the test images as PNG files in images/)

Models: open_clip's own CLIP class with a ViT image tower (the class of ViT-B-32), 40,033 weights, random
(seeded) and saved in the formats open_clip loads: a checkpoint file for `openclip:<arch>/<file>`, a folder with
open_clip_config.json for `openclip:local-dir:<folder>`, and a Hugging Face hub cache laid out on disk for
`openclip:hf-hub:<org>/<name>` (read offline). Each case's reference is open_clip's own
`create_model_and_transforms`: `model.encode_image(preprocess(image))`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from lookalike.encoders.clip import to_rgb
from lookalike.encoders.registry import create_image_encoder
from lookalike.errors import LookalikeError

ARCH = "lookalike-tiny-vit"
VISION = {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0}
MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": VISION,
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
# The preprocessing each local-dir: case declares in its open_clip_config.json (open_clip's defaults otherwise:
# shortest, bicubic, OpenAI mean/std).
PREPROCESS = {
    "longest": {
        "resize_mode": "longest",
        "interpolation": "bilinear",
        "fill_color": 128,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    },
    "squash": {"resize_mode": "squash", "interpolation": "bicubic", "mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]},
    # A non-square input: open_clip resizes the shortest side with its ResizeKeepRatio there.
    "shortest-32x24": {"resize_mode": "shortest", "interpolation": "bilinear"},
}
HUB_REPO = "lookalike-test/tiny-openclip"


def tiny_model(seed: int, image_size=None) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = MODEL_CFG if image_size is None else {**MODEL_CFG, "vision_cfg": {**VISION, "image_size": image_size}}
    return open_clip.model.CLIP(**cfg).eval()


def save_local_dir(model: torch.nn.Module, folder: Path, model_cfg: dict, preprocess_cfg: dict) -> None:
    """A folder as open_clip's push_to_hf_hub writes it: open_clip_config.json and open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def measure(source: str, saved: torch.nn.Module, images: dict[str, Image.Image]) -> dict:
    """Load `openclip:<source>` through lookalike and compare it with open_clip's own model and preprocess."""
    enc = create_image_encoder("openclip:" + source)
    (model,) = enc.torch_modules()
    # open_clip's own load of the same source: local-dir: and hf-hub: name the model and its weights at once.
    name, pretrained = (source, None) if source.startswith(("local-dir:", "hf-hub:")) else source.split("/", 1)
    ref_model, _, ref_pre = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    ref_model.eval()

    plain = [k for k, im in images.items() if im.mode in ("RGB", "L")]
    ours = np.stack([enc.preprocess(images[k]) for k in plain])
    theirs = torch.stack([ref_pre(images[k]) for k in plain])
    feats = enc.encode_images([images[k] for k in plain])
    with torch.inference_mode():
        ref_feats = ref_model.encode_image(theirs).numpy()
    # open_clip drops an alpha channel (convert("RGB") after resizing); lookalike composites onto white first.
    transparent = [k for k, im in images.items() if "A" in im.getbands()]
    rgba_ours = np.stack([enc.preprocess(images[k]) for k in transparent])
    rgba_ref = torch.stack([ref_pre(to_rgb(images[k])) for k in transparent]).numpy()
    cfg = enc.config()
    return {
        "dim": enc.dim,
        "input_size": list(enc.input_size),
        "config": {k: cfg[k] for k in ("resize_mode", "interpolation", "fill_color", "mean", "std")},
        "open_clip_preprocess_cfg": dict(ref_model.visual.preprocess_cfg),
        "params": sum(1 for _ in model.parameters()),
        "params_requiring_grad": sum(1 for p in model.parameters() if p.requires_grad),
        "modules_in_training_mode": sum(1 for m in model.modules() if m.training),
        "weights_equal_saved": weights_equal(model, saved),
        "preprocess_shape": list(ours.shape),
        "preprocess_dtype": str(ours.dtype),
        "pixels_max_diff": max_diff(ours, theirs.numpy()),
        "features_shape": list(feats.shape),
        "features_dtype": str(feats.dtype),
        "features_max_diff": max_diff(feats, ref_feats),
        "features_max_abs": float(np.max(np.abs(ref_feats))),
        "features_spread": max_diff(feats, feats.mean(axis=0, keepdims=True)),  # the images give different vectors
        "transparent_pixels_max_diff_vs_white": max_diff(rgba_ours, rgba_ref),
        "fingerprint": enc.fingerprint(),
    }


def error_of(name: str) -> str | None:
    try:
        create_image_encoder(name)
    except LookalikeError as e:
        return str(e)
    return None


def main(work: Path) -> dict:
    images = {p.stem: Image.open(p) for p in sorted((work / "images").glob("*.png"))}
    for im in images.values():
        im.load()
    config_dir = work / "configs"
    config_dir.mkdir()
    (config_dir / f"{ARCH}.json").write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(config_dir)  # the arch named in openclip:<arch>/<file>
    out: dict = {"open_clip": open_clip.__version__, "torch": torch.__version__}

    # openclip:<arch>/<checkpoint file>: open_clip's default preprocessing.
    ckpt = work / "file" / "tiny.pt"
    ckpt.parent.mkdir()
    m0 = tiny_model(seed=0)
    torch.save(m0.state_dict(), ckpt)
    file_source = f"{ARCH}/{ckpt}"
    out["file"] = measure(file_source, m0, images)
    out["file_again_fingerprint"] = create_image_encoder("openclip:" + file_source).fingerprint()

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # a count no encoder here asks for
    enc = create_image_encoder("openclip:" + file_source, threads=1)
    after_load = torch.get_num_threads()
    enc.encode_images(list(images.values()))
    out["threads"] = {"set": 3, "after_load": after_load, "after_encode": torch.get_num_threads()}
    torch.set_num_threads(before)

    m1 = tiny_model(seed=1)
    torch.save(m1.state_dict(), ckpt)  # other weights under the same file name
    out["file_new_weights"] = measure(file_source, m1, images)

    # openclip:local-dir:<folder>, with the preprocessing its open_clip_config.json declares.
    for case, pp in PREPROCESS.items():
        size = [32, 24] if case == "shortest-32x24" else None
        model = tiny_model(seed=0, image_size=size)
        folder = work / "local" / case
        cfg = MODEL_CFG if size is None else {**MODEL_CFG, "vision_cfg": {**VISION, "image_size": size}}
        save_local_dir(model, folder, cfg, pp)
        out[case] = measure(f"local-dir:{folder}", model, images)
    folder = work / "local" / "longest"
    save_local_dir(tiny_model(seed=0), folder, MODEL_CFG, PREPROCESS["longest"])  # the same weights, written again
    out["longest_rewritten_fingerprint"] = create_image_encoder(f"openclip:local-dir:{folder}").fingerprint()
    save_local_dir(m1, folder, MODEL_CFG, PREPROCESS["longest"])
    out["longest_new_weights"] = measure(f"local-dir:{folder}", m1, images)

    # openclip:hf-hub:<org>/<name> from the hub cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1 set by the test).
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + HUB_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    hub_fingerprints = []
    for m in (m0, m1):
        save_local_dir(m, repo / "snapshots" / ("0" * 40), MODEL_CFG, {})
        hub_fingerprints.append(measure(f"hf-hub:{HUB_REPO}", m, images))
    out["hub"], out["hub_new_weights"] = hub_fingerprints

    out["errors"] = {
        "missing_file": error_of(f"openclip:{ARCH}/{work / 'nope.pt'}"),
        "unknown_arch": error_of(f"openclip:no-such-arch/{ckpt}"),
    }
    return out


if __name__ == "__main__":
    json.dump(main(Path(sys.argv[1])), sys.stdout)
