"""Which torch device a run uses (`--device auto|cpu|cuda[:N]|mps`) and its mixed-precision context.

A device that is asked for and missing is a one-line error, never a silent fall-back to the CPU; only `auto`
chooses (CUDA, else MPS, else CPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from lookalike.errors import LookalikeError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_available():
            raise LookalikeError("--device mps: this torch build or machine has no MPS (Apple GPU) backend")
        return torch.device("mps")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LookalikeError(
                f"--device {spec}: torch {torch.__version__} sees no CUDA GPU (a CPU build, or no driver); "
                "see the README's 'GPU' section for installing a CUDA build"
            )
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LookalikeError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise LookalikeError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {spec!r}")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """torch.autocast in `precision` (fp32: nothing changes)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[precision]):
        yield


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
