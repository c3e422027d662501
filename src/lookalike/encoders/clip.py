"""CLIP-family image encoders: Hugging Face CLIP / SigLIP (FashionCLIP included) and OpenCLIP.

Both load pretrained weights once, freeze them and expose the model's projected image embedding
(`get_image_features` / `encode_image`), raw (not L2-normalised). transformers and open_clip are optional
and imported only when a model is built, so `import lookalike` never needs them.

Preprocessing re-implements the model's own eval transform with PIL + numpy (torchvision is not
needed): the size, mean/std and resize/crop behaviour are read from the model's image-processor config
(`preprocessor_config.json`) or from OpenCLIP's `visual.preprocess_cfg`, so it matches the reference
pipeline pixel for pixel up to float rounding. Transparent images are composited onto white first (as
transformers does; open_clip's own transform drops the alpha channel), which suits product photos with transparent
backgrounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.encoders.base import ImageEncoder, freeze, torch_threads
from lookalike.encoders.registry import ModelSpec, register_family, register_model
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Files whose size/mtime identify a checkpoint directory's weights (and its model config).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


# --------------------------------------------------------------------------------------------------
# PIL + numpy image ops shared by both families
# --------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, compositing any transparency onto a white background (as transformers' convert_to_rgb)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the shorter side = size; the longer side truncated (HF and torchvision)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_or_pad(arr: np.ndarray, height: int, width: int, fill=0, rounding: str = "floor") -> np.ndarray:
    """Center-crop an HWC uint8 array to (height, width), padding with `fill` first when it is smaller.

    rounding="floor" follows transformers' center_crop (offset = (H - h) // 2, pad split with the extra
    pixel first); rounding="round" follows torchvision's CenterCrop (offset = round((H - h) / 2), pad
    split with the extra pixel last).
    """
    h, w = arr.shape[:2]
    if height > h or width > w:
        new_h, new_w = max(h, height), max(w, width)
        if rounding == "floor":
            top, left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)  # ceil, as transformers
        else:
            top, left = (new_h - h) // 2, (new_w - w) // 2  # floor, as torchvision's pad
        padded = np.empty((new_h, new_w, arr.shape[2]), dtype=arr.dtype)
        padded[...] = np.asarray(fill, dtype=arr.dtype)
        padded[top : top + h, left : left + w] = arr
        arr, h, w = padded, new_h, new_w
    if rounding == "floor":
        top, left = (h - height) // 2, (w - width) // 2
    else:
        top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return arr[top : top + height, left : left + width]


def normalise(arr: np.ndarray, mean, std, scale: float = 1 / 255.0) -> np.ndarray:
    """HWC uint8 → CHW float32 of (x * scale - mean) / std."""
    x: np.ndarray = arr.astype(np.float32) * np.float32(scale)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _height_width(size: Any) -> tuple[int, int]:
    """An int (a square) or a sequence ending (height, width) as (height, width)."""
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[-2]), int(size[-1]))


def _triple(v) -> tuple[float, float, float]:
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    v = tuple(float(x) for x in v)
    return v * 3 if len(v) == 1 else v


# --------------------------------------------------------------------------------------------------
# Hugging Face CLIP / SigLIP
# --------------------------------------------------------------------------------------------------


def _import_transformers():
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        raise LookalikeError(
            f"Hugging Face CLIP/SigLIP encoders need transformers: pip install 'lookalike[clip]' ({e})"
        ) from e
    return transformers


def _looks_local(source: str) -> bool:
    """A filesystem path rather than a hub name ("org/name" also contains a slash, so be explicit)."""
    return (
        os.path.isabs(source)
        or source.startswith(("./", "../", "~", ".\\", "..\\"))
        or source in (".", "..")
        or os.path.isdir(source)
    )


def _files_identity(directory: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of every weights file and config.json in a checkpoint directory."""
    out = []
    for p in sorted(directory.iterdir()):
        if p.name == "config.json" or p.name.endswith(_WEIGHT_SUFFIXES):
            st = p.stat()  # follows the HF cache's snapshot symlinks to the blobs
            out.append((p.name, st.st_size, st.st_mtime_ns))
    return out


def state_dict_sha1(module) -> str:
    """SHA-1 of a module's weights (every parameter and buffer: name, dtype, shape, bytes), for weights whose
    files cannot be found: it reads every weight, so it is the fallback, not the rule."""
    import torch

    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class HFClipImageEncoder(ImageEncoder):
    """A frozen Hugging Face CLIP-family model (CLIPModel, SiglipModel, vision-only variants).

    `source` is a hub name (resolved from the local HF cache when offline) or a directory written by
    `save_pretrained`. Features are the projected image embedding, `dim` = the projection size.
    """

    family = "hf-clip"

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "cpu",
        threads: int | None = None,
        local_files_only: bool | None = None,
        revision: str | None = None,
        precision: str = "fp32",
    ):
        transformers = _import_transformers()
        import torch

        self.name = spec.name
        source = os.path.expanduser(spec.source)
        self.source = source
        self.device = torch.device(device)
        self.threads = threads
        if _looks_local(source):
            if not os.path.isdir(source):
                raise LookalikeError(f"model directory not found: {os.path.abspath(source)}")
            if not os.path.isfile(os.path.join(source, "config.json")):
                raise LookalikeError(
                    f"{os.path.abspath(source)} is not a Hugging Face model directory (no config.json)"
                )
        load_kw: dict[str, bool | str] = {}
        if local_files_only is not None:
            load_kw["local_files_only"] = local_files_only
        if revision is not None:
            load_kw["revision"] = revision

        try:
            hf_config = transformers.AutoConfig.from_pretrained(source, **load_kw)
        except Exception as e:  # OSError, ValueError, HTTP errors, ...
            raise LookalikeError(
                f"could not load the Hugging Face model config for {source!r}: {str(e).strip().rstrip('.')}. A hub "
                f"name must be in the local HF cache (or the hub reachable; HF_HUB_OFFLINE=1 skips the network "
                f"retries); a directory must hold config.json and the weights."
            ) from e
        self.model_type = hf_config.model_type
        model_cls = self._model_class(transformers, hf_config)
        try:
            model, info = model_cls.from_pretrained(source, output_loading_info=True, **load_kw)
        except Exception as e:
            raise LookalikeError(f"could not load the weights of Hugging Face model {source!r}: {e}") from e
        missing = [k for k in (info or {}).get("missing_keys", []) if "vision" in k or "visual" in k]
        if missing:
            raise LookalikeError(
                f"{source!r}: image-tower weights missing from the checkpoint "
                f"(they would be random): {sorted(missing)[:5]}"
            )
        if precision not in ("fp32", "fp16", "bf16"):
            raise LookalikeError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.model = model.to(self.device) if dtype is None else model.to(self.device, dtype)
        freeze(self.model)
        self._dtype = next(self.model.parameters()).dtype  # in the fingerprint: fp16 vectors are keyed apart

        self.pre = self._preprocess_config(transformers, source, hf_config, load_kw)
        self.input_size = self.pre["input_size"]
        self.dim = self._feature_dim(hf_config)
        self.weights = self._weights_identity(transformers, source, hf_config, load_kw)

    # -- loading ------------------------------------------------------------------------------------

    @staticmethod
    def _model_class(transformers, hf_config):
        mt = hf_config.model_type
        classes = {
            "clip": "CLIPModel",
            "siglip": "SiglipModel",
            "clip_vision_model": "CLIPVisionModelWithProjection",
            "siglip_vision_model": "SiglipVisionModel",
        }
        if mt in classes:
            return getattr(transformers, classes[mt])
        archs = getattr(hf_config, "architectures", None) or []
        for arch in archs:  # other CLIP-like models (e.g. chinese_clip, altclip) exposing get_image_features
            cls = getattr(transformers, arch, None)
            if cls is not None and hasattr(cls, "get_image_features"):
                return cls
        raise LookalikeError(
            f"unsupported Hugging Face model type {mt!r} (architectures {archs}); expected a CLIP or SigLIP model"
        )

    def _feature_dim(self, hf_config) -> int:
        proj = getattr(hf_config, "projection_dim", None)
        if self.model_type in ("clip", "clip_vision_model") and proj:
            return int(proj)
        if self.model_type in ("siglip", "siglip_vision_model"):
            vc = getattr(hf_config, "vision_config", hf_config)
            return int(vc.hidden_size)
        h, w = self.input_size  # anything else: measure it
        return int(self.forward(np.zeros((1, 3, h, w), np.float32)).shape[1])

    def _preprocess_config(self, transformers, source, hf_config, load_kw) -> dict:
        """size / crop / resample / mean / std from preprocessor_config.json, with the processor's defaults."""
        raw: dict = {}
        path = None
        if os.path.isdir(source):
            p = os.path.join(source, "preprocessor_config.json")
            path = p if os.path.isfile(p) else None
        else:
            try:
                from transformers.utils import cached_file

                path = cached_file(
                    source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **load_kw
                )
            except Exception:
                path = None
        if path:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        vc = getattr(hf_config, "vision_config", hf_config)
        image_size = int(getattr(vc, "image_size", 224))
        siglip = "siglip" in self.model_type
        # The processors' class defaults (CLIPImageProcessor / SiglipImageProcessor) where the file is silent.
        if siglip:
            defaults = {
                "size": {"height": image_size, "width": image_size},
                "do_center_crop": False,
                "resample": 2,
                "image_mean": (0.5, 0.5, 0.5),
                "image_std": (0.5, 0.5, 0.5),
            }
        else:
            defaults = {
                "size": {"shortest_edge": image_size},
                "do_center_crop": True,
                "crop_size": {"height": image_size, "width": image_size},
                "resample": 3,
                "image_mean": OPENAI_MEAN,
                "image_std": OPENAI_STD,
            }
        cfg = {**defaults, **{k: v for k, v in raw.items() if v is not None}}
        do_resize = bool(cfg.get("do_resize", True))
        do_crop = bool(cfg.get("do_center_crop", False))
        raw_size = cfg.get("size")
        size: dict[str, Any] = {}
        if isinstance(raw_size, (int, float)):  # legacy int sizes: shortest edge when cropping after, else square
            size = {"shortest_edge": int(raw_size)} if do_crop else {"height": int(raw_size), "width": int(raw_size)}
        elif isinstance(raw_size, (list, tuple)):
            size = {"height": int(raw_size[0]), "width": int(raw_size[-1])}
        elif isinstance(raw_size, dict):
            size = raw_size
        resize: tuple[str, int | tuple[int, int]]
        exact: tuple[int, int] | None = None
        if "shortest_edge" in size and size.get("shortest_edge") and not size.get("longest_edge"):
            resize = ("shortest", int(size["shortest_edge"]))
        elif size.get("height") and size.get("width"):
            exact = (int(size["height"]), int(size["width"]))
            resize = ("exact", exact)
        else:
            raise LookalikeError(f"{source!r}: unsupported image-processor size {raw_size!r}")
        raw_crop = cfg.get("crop_size")
        if isinstance(raw_crop, (int, float)):
            raw_crop = {"height": int(raw_crop), "width": int(raw_crop)}
        crop = (int(raw_crop["height"]), int(raw_crop["width"])) if (do_crop and raw_crop) else None
        input_size: tuple[int, int]
        if crop is not None:
            input_size = crop
        elif exact is not None and do_resize:
            input_size = exact
        else:
            raise LookalikeError(f"{source!r}: image processor gives variable-size inputs (size={size!r}, no crop)")
        resample = cfg.get("resample", 3)
        resample = int(resample.value if hasattr(resample, "value") else resample)
        do_rescale = bool(cfg.get("do_rescale", True))
        do_normalize = bool(cfg.get("do_normalize", True))
        return {
            "resize": resize if do_resize else None,
            "crop": crop,
            "resample": resample,
            "scale": float(cfg.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
            "mean": _triple(cfg["image_mean"]) if do_normalize else (0.0, 0.0, 0.0),
            "std": _triple(cfg["image_std"]) if do_normalize else (1.0, 1.0, 1.0),
            "input_size": input_size,
        }

    def _weights_identity(self, transformers, source, hf_config, load_kw) -> dict:
        """Resolved checkpoint directory + size/mtime of its weight files (+ the hub commit when known). When
        the files cannot be found, a hash of the loaded weights instead: the identity must change whenever
        the weights do, or the embedding cache would serve vectors of the old weights."""
        directory, why = None, "not a local directory"
        if os.path.isdir(source):
            directory = Path(source).resolve()
        else:
            try:
                from transformers.utils import cached_file

                cfg_path = cached_file(source, "config.json", **{**load_kw, "local_files_only": True})
                directory = Path(cfg_path).parent if cfg_path else None
            except (OSError, ValueError) as e:  # transformers reports a failed hub-cache lookup as OSError
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        ident = {"commit": getattr(hf_config, "_commit_hash", None)}
        files = _files_identity(directory) if directory is not None else []
        if any(name != "config.json" for name, _, _ in files):
            ident["path"] = str(directory)
            ident["files"] = files
        else:
            logger.info("%s: weight files not found (%s); fingerprinting the loaded weights", source, why)
            ident["weights_sha1"] = state_dict_sha1(self.model)
        return ident

    # -- ImageEncoder -------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> np.ndarray:
        im = to_rgb(image)
        pre = self.pre
        if pre["resize"] is not None:
            kind, size = pre["resize"]
            if kind == "shortest":
                new_w, new_h = shortest_edge_size(im.width, im.height, size)
            else:
                new_h, new_w = size
            if (new_w, new_h) != im.size:
                im = im.resize((new_w, new_h), pre["resample"])
        arr = np.asarray(im, dtype=np.uint8)
        if pre["crop"] is not None:
            crop_h, crop_w = pre["crop"]
            arr = center_crop_or_pad(arr, crop_h, crop_w, fill=0, rounding="floor")
        return normalise(arr, pre["mean"], pre["std"], pre["scale"])

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device, self._dtype)
        with torch_threads(self.threads), torch.inference_mode():
            if self.model_type == "clip_vision_model":
                feats = self.model(pixel_values=pixels).image_embeds
            elif self.model_type == "siglip_vision_model":
                feats = self.model(pixel_values=pixels).pooler_output
            else:
                feats = self.model.get_image_features(pixel_values=pixels)
                if not torch.is_tensor(feats):  # transformers 5 returns an output object
                    feats = feats.pooler_output
        return np.ascontiguousarray(feats.float().cpu().numpy(), dtype=np.float32)

    def config(self) -> dict:
        pre = self.pre
        return {
            "family": self.family,
            "source": self.source,
            "model_type": self.model_type,
            "weights": repr(self.weights),
            "dtype": str(self._dtype),
            "dim": self.dim,
            "input_size": tuple(self.input_size),
            "resize": repr(pre["resize"]),
            "crop": pre["crop"],
            "resample": _RESAMPLE_NAMES.get(pre["resample"], pre["resample"]),
            "scale": pre["scale"],
            "mean": pre["mean"],
            "std": pre["std"],
            "features": "get_image_features",
        }

    def torch_modules(self) -> list:
        return [self.model]


# --------------------------------------------------------------------------------------------------
# OpenCLIP
# --------------------------------------------------------------------------------------------------


def _split_openclip_source(source: str) -> tuple[str, str | None]:
    """Split an OpenCLIP source into open_clip's (model_name, pretrained).

    "ViT-B-32/laion2b_s34b_b79k" gives (arch, tag); "ViT-B-32//abs/w.bin" or "ViT-B-32/./w.bin" gives
    (arch, checkpoint file); "hf-hub:org/name" gives (the whole source, None): open_clip then reads the
    config and weights from that hub repository.
    """
    if source.startswith(("hf-hub:", "local-dir:")):
        return source, None
    arch, _, pretrained = source.partition("/")
    if not arch or not pretrained:
        # Without pretrained weights open_clip would hand back a randomly initialised (useless) frozen model.
        raise LookalikeError(
            f"openclip source {source!r} must be <arch>/<pretrained tag or checkpoint file>, "
            f"e.g. ViT-B-32/laion2b_s34b_b79k"
        )
    return arch, pretrained


class OpenClipImageEncoder(ImageEncoder):
    """A frozen OpenCLIP model: `open_clip.create_model_and_transforms(arch, pretrained=tag_or_file)`.

    Features are `model.encode_image(x)` (projected, not normalised). Preprocessing follows the model's
    `visual.preprocess_cfg` (size, mean, std, interpolation, resize_mode, fill_color), as open_clip's own
    eval transform (`image_transform_v2(..., is_train=False)`), with PIL + numpy.
    """

    family = "openclip"

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "fp32",
        cache_dir: str | None = None,
    ):
        self.name = spec.name
        self.source = spec.source
        self.arch, pretrained = _split_openclip_source(spec.source)
        try:
            import open_clip
            import torch
        except ImportError as e:
            raise LookalikeError(
                f"OpenCLIP encoders need open_clip: pip install open_clip_torch, or, beside this project's CPU torch, "
                f"put the .venv/openclip folder that ./run makes on PYTHONPATH (README, Encoders) ({e})"
            ) from e

        if pretrained is not None and (
            os.path.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors", ".ckpt"))
        ):
            pretrained = os.path.expanduser(pretrained)
            if not os.path.isfile(pretrained):
                raise LookalikeError(f"OpenCLIP checkpoint file not found: {os.path.abspath(pretrained)}")
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.threads = threads
        kw = {"device": self.device, "precision": precision}
        if cache_dir is not None:
            kw["cache_dir"] = cache_dir
        try:
            model, _, _ = open_clip.create_model_and_transforms(self.arch, pretrained=pretrained, **kw)
        except Exception as e:  # unknown arch/tag, missing file, no network and not cached, ...
            raise LookalikeError(
                f"could not load OpenCLIP model {spec.source!r} (arch {self.arch!r}, pretrained {pretrained!r}): {e}"
            ) from e
        self.model = model
        freeze(self.model)
        self._dtype = next(self.model.parameters()).dtype
        self.precision = precision
        self.open_clip_version = getattr(open_clip, "__version__", "?")

        visual = self.model.visual
        pp = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = pp.get("size") or getattr(visual, "image_size", 224)
        h, w = _height_width(size)
        self.input_size = (h, w)
        self.mean = _triple(pp.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN)
        self.std = _triple(pp.get("std") or getattr(visual, "image_std", None) or OPENAI_STD)
        interpolation = pp.get("interpolation") or "bicubic"
        self.interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"  # "random" → bicubic at eval
        self.resize_mode = pp.get("resize_mode") or "shortest"
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise LookalikeError(f"{spec.source!r}: unsupported OpenCLIP resize_mode {self.resize_mode!r}")
        self.fill_color = int(pp.get("fill_color") or 0)

        dim = getattr(visual, "output_dim", None)
        if not dim:
            try:
                dim = (open_clip.get_model_config(self.arch) or {}).get("embed_dim")
            except Exception:
                dim = None
        self.dim = int(dim) if dim else int(self.forward(np.zeros((1, 3, h, w), np.float32)).shape[1])
        self.weights = self._weights_identity()

    def _weights_identity(self) -> dict:
        if self.pretrained and os.path.isfile(self.pretrained):
            p = Path(self.pretrained).resolve()
            st = p.stat()
            return {"file": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if self.pretrained:  # a named tag pins its weights (open_clip's pretrained registry, by version)
            return {"tag": self.pretrained, "open_clip": self.open_clip_version}
        # hf-hub: / local-dir: name a repository or folder whose weights can change under the same name.
        return {"source": self.source, "weights_sha1": state_dict_sha1(self.model)}

    def preprocess(self, image: Image.Image) -> np.ndarray:
        im = to_rgb(image)
        h, w = self.input_size
        resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
        if self.resize_mode == "squash":
            if im.size != (w, h):
                im = im.resize((w, h), resample)
            return normalise(np.asarray(im, dtype=np.uint8), self.mean, self.std)
        if self.resize_mode == "shortest" and h == w:
            new_w, new_h = shortest_edge_size(im.width, im.height, h)  # torchvision Resize(int)
        else:
            # open_clip's ResizeKeepRatio: scale so the shortest (or longest) side fits the target.
            if self.resize_mode == "shortest":
                # open_clip builds this one (a non-square target) without the configured interpolation: bicubic.
                resample = Image.Resampling.BICUBIC
            rh, rw = im.height / h, im.width / w
            ratio = max(rh, rw) if self.resize_mode == "longest" else min(rh, rw)
            new_h, new_w = round(im.height / ratio), round(im.width / ratio)
        if (new_w, new_h) != im.size:
            im = im.resize((new_w, new_h), resample)
        fill = self.fill_color if self.resize_mode == "longest" else 0
        arr = center_crop_or_pad(np.asarray(im, dtype=np.uint8), h, w, fill=fill, rounding="round")
        return normalise(arr, self.mean, self.std)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device, self._dtype)
        with torch_threads(self.threads), torch.inference_mode():
            feats = self.model.encode_image(pixels)
        return np.ascontiguousarray(feats.float().cpu().numpy(), dtype=np.float32)

    def config(self) -> dict:
        return {
            "family": self.family,
            "source": self.source,
            "arch": self.arch,
            "weights": repr(self.weights),
            "precision": self.precision,
            "dim": self.dim,
            "input_size": self.input_size,
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "fill_color": self.fill_color,
            "mean": self.mean,
            "std": self.std,
            "features": "encode_image",
        }

    def torch_modules(self) -> list:
        return [self.model]


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


def _check_options(cls, spec: ModelSpec, kwargs: dict) -> None:
    """Name an unknown or misspelt option precisely instead of a TypeError from deep inside."""
    import inspect

    try:
        inspect.signature(cls.__init__).bind(None, spec, **kwargs)
    except TypeError as e:
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "spec")]
        raise LookalikeError(f"bad options {sorted(kwargs)} for {spec.name!r} ({e}); allowed: {allowed}") from None


def build_hf_clip(spec: ModelSpec, **kwargs) -> HFClipImageEncoder:
    _check_options(HFClipImageEncoder, spec, kwargs)
    return HFClipImageEncoder(spec, **kwargs)


def build_openclip(spec: ModelSpec, **kwargs) -> OpenClipImageEncoder:
    _check_options(OpenClipImageEncoder, spec, kwargs)
    return OpenClipImageEncoder(spec, **kwargs)


register_family("hf-clip", build_hf_clip)
register_family("openclip", build_openclip)

register_model(
    ModelSpec(
        "fashion-clip",
        "image",
        "hf-clip",
        "patrickjohncyh/fashion-clip",
        "FashionCLIP (CLIP ViT-B/32 fine-tuned on fashion products), 512-d projected image features",
    )
)
register_model(
    ModelSpec(
        "clip-vit-b32",
        "image",
        "hf-clip",
        "openai/clip-vit-base-patch32",
        "OpenAI CLIP ViT-B/32, 512-d projected image features",
    )
)
register_model(
    ModelSpec(
        "siglip-base",
        "image",
        "hf-clip",
        "google/siglip-base-patch16-224",
        "SigLIP ViT-B/16 at 224 px, 768-d pooled image features",
    )
)
register_model(
    ModelSpec(
        "openclip-vit-b32",
        "image",
        "openclip",
        "ViT-B-32/laion2b_s34b_b79k",
        "OpenCLIP ViT-B/32 trained on LAION-2B, 512-d projected image features",
    )
)
