"""Questions with figures: where their files are, how a figure is embedded and fused with the question's text,
and (for tests and benchmarks only) figures rendered from KMWP problems.

**Paths.** Banks in the wild keep figures in date folders (``20230105/q12.png`` or ``2023/01/05/q12.png``),
and a row may name a figure by its file name alone, or under the other date layout than the one on disk.
`FigureResolver` tries the path as given, then the same date in the other layouts, then the file name among
the date folders under the bank (one walk, cached); a name found in several folders is ambiguous and not
guessed. A question's explanation images are resolved the same way and kept apart from its figures.

**Fusion.** A question's vector is its text vector t, or t fused with its figure vector f (the mean of its
figures' unit vectors, unit again), each unit: ``mean`` = unit(w·t + (1 − w)·f), when text and image share
one space (a CLIP / SigLIP pair); ``concat`` = [√w·t, √(1 − w)·f] / norm, so that between two questions with
figures the cosine is exactly w·cos(texts) + (1 − w)·cos(figures), whatever the two spaces. A question without
a figure keeps its text vector (mean) or [√w·t, 0] / norm (concat: its cosines carry only the text part). The
third option, ``multimodal``, is one model reading text and figure together: Qwen3-VL-Embedding's image-and-
text input (`encode_multimodal` in encoders/hf_text.py, last-token or mean pooling).

**Rendered figures (synthetic).** KMWP has no figures. `render_problem` draws a problem's shape (정사각형,
삼각형, 원 ... named in its text) with its numbers on the sides, or its numbers as bars when it names no shape,
into a small PNG. These are synthetic figures derived from the text; they exercise the figure path and the
fusion settings, and say nothing about real exam figures.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lookalike.errors import LookalikeError
from lookalike.vectors import unit

_DATE = re.compile(r"(?<!\d)(\d{4})(?:[/_-]?)(\d{2})(?:[/_-]?)(\d{2})(?!\d)")
_DATE_DIR = re.compile(r"^\d{8}$|^\d{4}$|^\d{2}$")


class FigureResolver:
    """Figure paths as a bank names them → files under the bank's folder (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._by_name: dict[str, list[Path]] | None = None

    def _index(self) -> dict[str, list[Path]]:
        """File name → files under date folders (YYYYMMDD/…, YYYY/MM/DD/…), found in one walk."""
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                rel = Path(dirpath).relative_to(self.root).parts
                dirnames[:] = [d for d in dirnames if _DATE_DIR.match(d) or not rel]
                if rel and all(_DATE_DIR.match(p) for p in rel):
                    for f in filenames:
                        self._by_name.setdefault(f, []).append(Path(dirpath) / f)
        return self._by_name

    def resolve(self, raw: str) -> tuple[Path | None, str | None]:
        """(the file, None), or (None, why: 'missing' or 'ambiguous')."""
        given = self.root / raw
        if given.is_file():
            return given, None
        name = Path(raw).name
        m = _DATE.search(str(Path(raw).parent).replace(os.sep, "/"))
        if m:
            y, mo, d = m.groups()
            for layout in (Path(f"{y}{mo}{d}"), Path(y) / mo / d, Path(f"{y}-{mo}-{d}")):
                p = self.root / layout / name
                if p.is_file():
                    return p, None
        found = self._index().get(name, [])
        if m:
            found = [p for p in found if "".join(m.groups()) in "".join(p.relative_to(self.root).parts[:-1])]
        if len(found) == 1:
            return found[0], None
        return None, "ambiguous" if found else "missing"


class FigureFusion(BaseModel):
    """How a question's text and figure make its vector (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["mean", "concat", "multimodal"] = "concat"
    text_weight: float = Field(0.5, ge=0, le=1, description="w: the text's share of the fused cosine")
    image_encoder: str = Field(
        "efficientnet-lite0", description="an image encoder of the registry (unused by 'multimodal')"
    )


def multimodal_vectors(encoder, texts: list[str], figures: list) -> np.ndarray:
    """Question vectors from one multimodal model reading each text with its figure (a PIL image or None)."""
    if not hasattr(encoder, "encode_multimodal"):
        raise LookalikeError(
            f"fusion 'multimodal' needs a text encoder that reads figures too (qwen3-vl:<dir> or "
            f"qwen3-vl-mean:<dir>), not {encoder.name}"
        )
    return encoder.encode_multimodal(texts, figures)


def first_figures(paths: list[list[Path]]) -> list:
    """Each question's first figure as a PIL image (None without one); a file that cannot be read is named."""
    from lookalike.inference import decode_image

    out: list = []
    for ps in paths:
        if not ps:
            out.append(None)
            continue
        try:
            out.append(decode_image(Path(ps[0]).read_bytes(), f"figure {ps[0]}"))
        except OSError as e:
            raise LookalikeError(f"cannot read figure {ps[0]}: {e}") from None
    return out


def fuse(text: np.ndarray, figure: np.ndarray, has_figure: np.ndarray, cfg: FigureFusion) -> np.ndarray:
    """(n, d) unit question vectors from unit text vectors (n, dt) and figure vectors (n, df; rows without a
    figure are ignored)."""
    t = unit(np.asarray(text, np.float32))
    f = np.where(np.asarray(has_figure)[:, None], unit(np.asarray(figure, np.float32)), 0.0).astype(np.float32)
    w = cfg.text_weight
    if cfg.method == "mean":
        if t.shape[1] != f.shape[1]:
            raise LookalikeError(
                f"fusion 'mean' needs text and figure vectors of one space; got {t.shape[1]}-d text and "
                f"{f.shape[1]}-d figures (use 'concat', or a CLIP / SigLIP text and image pair)"
            )
        out = np.where(np.asarray(has_figure)[:, None], w * t + (1 - w) * f, t)
    else:
        out = np.concatenate([np.sqrt(w) * t, np.sqrt(1 - w) * f], axis=1)
    return unit(out.astype(np.float32))


def figure_vectors(paths: list[list[Path]], encoder) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, dim), has_figure (n,)): each question's figures embedded, their unit vectors averaged."""
    from lookalike.inference import decode_image

    flat = [(i, p) for i, ps in enumerate(paths) for p in ps]
    out = np.zeros((len(paths), encoder.dim), np.float32)
    has = np.zeros(len(paths), bool)
    for s in range(0, len(flat), 32):
        part = flat[s : s + 32]
        images = []
        for _, p in part:
            try:
                data = Path(p).read_bytes()
            except OSError as e:
                raise LookalikeError(f"cannot read figure {p}: {e}") from None
            images.append(decode_image(data, f"figure {p}"))
        vecs = unit(np.asarray(encoder.encode_images(images), np.float32))
        for (i, _), v in zip(part, vecs):
            out[i] += v
            has[i] = True
    out[has] = unit(out[has])
    return out, has


SHAPES = {
    "정사각형": 4,
    "직사각형": 4,
    "사각형": 4,
    "정육각형": 6,
    "육각형": 6,
    "정팔각형": 8,
    "팔각형": 8,
    "오각형": 5,
    "정오각형": 5,
    "삼각형": 3,
    "원": 0,
}
_CIRCLE = ("반지름", "지름", "원주", "원의", "원을", "원 모양")  # plain 원 is mostly the currency (500원)


def shape_of(text: str) -> str | None:
    """The first shape a problem names (at one position the longer name: 정사각형, not 사각형)."""
    hits = [(text.find(w), -len(w), w) for w in SHAPES if w != "원" and w in text]
    circle = [text.find(w) for w in _CIRCLE if w in text]
    if circle:
        hits.append((min(circle), 0, "원"))
    return min(hits)[2] if hits else None


def render_problem(text: str, path: Path, size: int = 96) -> Path:
    """A synthetic figure of a problem: its shape with its numbers, or its numbers as bars (see above)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)][:6]
    shape = shape_of(text)
    fig = plt.figure(figsize=(size / 48, size / 48), dpi=48)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    if shape is not None:
        sides = SHAPES[shape]
        if sides == 0:
            ax.add_patch(plt.Circle((0.5, 0.5), 0.35, fill=False, lw=2))
            pts = np.array([[0.5, 0.5], [0.85, 0.5]])
        else:
            a = np.linspace(0, 2 * np.pi, sides, endpoint=False) + np.pi / 2
            stretch = np.array([1.0, 0.6]) if shape == "직사각형" else np.ones(2)
            pts = 0.5 + 0.38 * np.c_[np.cos(a), np.sin(a)] * stretch
            ax.add_patch(plt.Polygon(pts, fill=False, lw=2))
        for n, v in enumerate(numbers[: max(len(pts), 1)]):
            mid = (pts[n % len(pts)] + pts[(n + 1) % len(pts)]) / 2
            ax.text(float(mid[0]), float(mid[1]), f"{v:g}", fontsize=7, ha="center")
    else:
        vals = numbers or [1.0]
        ax.bar(np.arange(len(vals)), np.array(vals) / max(vals), color="0.3")
        ax.set_xlim(-1, max(len(vals), 3))
    if shape is not None:
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
