"""Labelled binary image sets: a `positives/` + `negatives/` folder or a CSV of path,label.

Every image is decoded once here so a corrupt or missing file is skipped and counted instead of
failing a model later. Byte-identical images are collapsed: the real smiles set holds the same file
under both labels (5 cases) — such a conflict is dropped, since either label would leak across splits
or contradict itself — and a same-label copy is kept once, so no image can be in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.catalogue.schema import LoadReport
from lookalike.errors import LookalikeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_TRUE = {"1", "true", "yes", "pos", "positive", "smile", "smiling"}
_FALSE = {"0", "false", "no", "neg", "negative", "non-smile", "not smiling"}


@dataclass
class LabelledImages:
    """Decoded images (uint8 RGB arrays), labels (1 = positive) and stable keys (path relative to root)."""

    root: Path
    keys: list[str]
    paths: list[Path]
    labels: np.ndarray
    images: list[np.ndarray]
    sha1: list[str]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, idx) -> LabelledImages:
        idx = [int(i) for i in idx]
        return LabelledImages(
            self.root,
            [self.keys[i] for i in idx],
            [self.paths[i] for i in idx],
            self.labels[idx],
            [self.images[i] for i in idx],
            [self.sha1[i] for i in idx],
            self.report,
        )

    def select(self, keys: list[str]) -> LabelledImages:
        pos = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise LookalikeError(f"{len(missing)} split files are not in {self.root} (e.g. {missing[0]})")
        return self.subset([pos[k] for k in keys])


def _parse_label(raw: str) -> int | None:
    v = raw.strip().lower()
    return 1 if v in _TRUE else 0 if v in _FALSE else None


def _listing(source: Path, report: LoadReport) -> tuple[Path, list[tuple[Path, int]]]:
    if source.is_dir():
        pos, neg = source / "positives", source / "negatives"
        if not pos.is_dir() or not neg.is_dir():
            raise LookalikeError(f"{source}: expected sub-folders positives/ and negatives/ (or give a CSV path,label)")
        items = []
        for folder, label in ((pos, 1), (neg, 0)):
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    items.append((p, label))
                elif p.is_file():
                    report.skip("not an image file name", str(p))
        return source, items
    if not source.is_file():
        raise LookalikeError(f"labelled data not found: {source}")
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise LookalikeError(f"{source}: expected a CSV with columns path,label")
    items = []
    for n, r in enumerate(rows, 2):
        parsed = _parse_label(r["label"] or "")
        if parsed is None:
            report.skip(f"label not one of {sorted(_TRUE | _FALSE)}", f"{source}:{n} {r['label']!r}")
            continue
        p = Path(r["path"])
        items.append((p if p.is_absolute() else source.parent / p, parsed))
    return source.parent, items


def load_labelled(source: str | Path) -> LabelledImages:
    """Read and decode every listed image; skipped files are counted by reason in `.report`."""
    source = Path(source)
    report = LoadReport(str(source))
    root, items = _listing(source, report)
    decoded: dict[str, tuple[Path, int, np.ndarray]] = {}
    labels_of: dict[str, set[int]] = {}
    copies: dict[str, list[Path]] = {}
    for path, label in items:
        try:
            data = path.read_bytes()
        except OSError:
            report.skip("missing file", str(path))
            continue
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            report.skip("corrupt image", str(path))
            continue
        h = hashlib.sha1(data).hexdigest()
        labels_of.setdefault(h, set()).add(label)
        copies.setdefault(h, []).append(path)
        decoded.setdefault(h, (path, label, arr))
    keys, paths, labels, images, shas = [], [], [], [], []
    for h, (path, label, arr) in decoded.items():
        if len(labels_of[h]) > 1:
            for p in copies[h]:
                report.skip("same image labelled both positive and negative", str(p))
            continue
        for p in copies[h][1:]:
            report.skip("byte-identical copy of another file (kept once)", str(p))
        try:
            keys.append(path.resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            keys.append(path.resolve().as_posix())
        paths.append(path)
        labels.append(label)
        images.append(arr)
        shas.append(h)
    report.loaded = len(keys)
    labels_arr = np.asarray(labels, np.int64)
    report.counts["label"] = Counter(
        {"positive": int(labels_arr.sum()), "negative": int(len(labels_arr) - labels_arr.sum())}
    )
    if report.loaded == 0:
        raise LookalikeError(f"{source}: no readable labelled images ({report.summary()})")
    return LabelledImages(root, keys, paths, labels_arr, images, shas, report)


def stratified_split(labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices for train/val/test, each keeping the label ratio (per-class shuffles, then cuts)."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise LookalikeError(f"split fractions must be ≥0 and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = round(fractions[0] * len(idx))
        b = a + round(fractions[1] * len(idx))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.extend(chunk.tolist())
    return tuple(np.sort(np.asarray(p, np.int64)) for p in parts)


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices keeping the label ratio (deterministic for a seed)."""
    if n >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, (n / len(labels), 0.0, 1 - n / len(labels)), seed)[0]


def write_split(path: Path, data: LabelledImages, split: dict[str, np.ndarray], seed: int) -> None:
    """The split as file keys and content hashes, so `lookalike ab` can evaluate on exactly the held-out files."""
    out = {"root": str(data.root), "seed": seed}
    for name, idx in split.items():
        out[name] = [data.keys[i] for i in idx]
        out[f"{name}_sha1"] = [data.sha1[i] for i in idx]
    path.write_text(json.dumps(out, indent=1))


def read_split(path: Path) -> dict:
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LookalikeError(f"cannot read split file {path}: {e}") from None
    for name in ("val", "test"):
        if name not in split:
            raise LookalikeError(f"split file {path} has no {name!r} list")
    return split
