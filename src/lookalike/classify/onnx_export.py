"""Export a PyTorch module to ONNX atomically and open it with ONNX Runtime.

ONNX Runtime runs the small depthwise-separable networks used here faster than eager PyTorch on a few
CPU cores (`benchmarks/core.py` prints both runtimes for EfficientNet-Lite0), and the export is how
trained heads are shipped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from lookalike.encoders.base import default_threads


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_name: str,
    dynamic: dict[int, str],
) -> Path:
    """Write `path` via a temporary file, so a failed export never leaves a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with warnings.catch_warnings():  # the exporter's constant-folding notes are not actionable
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(tmp),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: dynamic, output_name: {0: dynamic[0]}},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave cores to the image decoders
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
