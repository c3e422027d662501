"""Named frozen encoders and their pretrained configs, decoupled from the code that builds them (as timm)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.encoders.base import ImageEncoder, TextEncoder
from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    from lookalike.config import EncoderConfig


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "image" or "text"
    family: str
    source: str
    description: str
    defaults: dict = field(default_factory=dict)


_SPECS: dict[str, ModelSpec] = {}
_BUILDERS: dict[str, Callable[..., ImageEncoder | TextEncoder]] = {}


def register_family(family: str, builder: Callable[..., ImageEncoder | TextEncoder]) -> None:
    _BUILDERS[family] = builder


def register_model(spec: ModelSpec) -> None:
    _SPECS[spec.name] = spec


def list_models(kind: str | None = None) -> list[ModelSpec]:
    _load_families()
    return [s for s in _SPECS.values() if kind is None or s.kind == kind]


def _resolve(name: str, kind: str) -> ModelSpec:
    """A registered name, or `hf:<hub name or local dir>` / `openclip:<arch>/<pretrained or file>`."""
    _load_families()
    if name in _SPECS:
        spec = _SPECS[name]
    elif name.startswith("hf:"):
        spec = ModelSpec(name, "image", "hf-clip", name[3:], "Hugging Face CLIP/SigLIP model")
    elif name.startswith("openclip:"):
        spec = ModelSpec(name, "image", "openclip", name[9:], "OpenCLIP model")
    else:
        known = ", ".join(s.name for s in _SPECS.values() if s.kind == kind)
        raise LookalikeError(
            f"unknown {kind} encoder {name!r}; known: {known}; or use hf:<path> / openclip:<arch>/<tag>"
        )
    if spec.kind != kind:
        raise LookalikeError(f"{name!r} is a {spec.kind} encoder, not a {kind} encoder")
    return spec


def create_image_encoder(name: str, **overrides) -> ImageEncoder:
    spec = _resolve(name, "image")
    encoder = _BUILDERS[spec.family](spec, **{**spec.defaults, **overrides})
    if not isinstance(encoder, ImageEncoder):
        raise LookalikeError(f"{name!r}: family {spec.family!r} built a {type(encoder).__name__}, not an image encoder")
    return encoder


def image_encoder_for(config: EncoderConfig, cache_dir: Path, threads: int | None = None) -> ImageEncoder:
    """The run config's frozen image encoder; one definition for the local path and every Ray actor, so
    both compute (and key) exactly the same vectors. `threads`: its inference threads (an actor's CPUs).
    `config.device`: ONNX Runtime's provider for EfficientNet (CUDA with onnxruntime-gpu), the torch device
    for the Hugging Face and OpenCLIP encoders, which run in half precision on a GPU (their fingerprint
    names the dtype, so fp16 vectors never mix with fp32 ones in the cache)."""
    extra: dict = (
        {"image_size": config.image_size, "runtime": config.runtime, "cache_dir": cache_dir, "device": config.device}
        if config.image_model == "efficientnet-lite0"
        else {}
    )
    if config.image_model != "efficientnet-lite0" and _resolve(config.image_model, "image").family in (
        "hf-clip",
        "openclip",
    ):
        from lookalike.devices import resolve_device  # torch: these encoders import it anyway

        device = resolve_device(config.device)
        extra["device"] = str(device)
        extra["precision"] = "fp32" if device.type == "cpu" else "fp16"
    if threads:
        extra["threads"] = threads
    return create_image_encoder(config.image_model, **extra)


def create_text_encoder(name: str, **overrides) -> TextEncoder:
    spec = _resolve(name, "text")
    encoder = _BUILDERS[spec.family](spec, **{**spec.defaults, **overrides})
    if not isinstance(encoder, TextEncoder):
        raise LookalikeError(f"{name!r}: family {spec.family!r} built a {type(encoder).__name__}, not a text encoder")
    return encoder


def _load_families() -> None:
    """Import the modules that register families; heavy optional libraries load only when built."""
    from lookalike.encoders import clip, efficientnet, text  # noqa: F401
