"""Charts and image grids written next to the results (matplotlib, headless)."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# Labels may hold Korean (K-Fashion) that the default font cannot draw; the grid is still useful.
warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)

import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from lookalike.catalogue.schema import ImageRef  # noqa: E402


def training_charts(history: list[dict], path: Path, title: str = "") -> None:
    """2×2: loss, validation metric, learning rate, positive/negative similarity."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    ax[0, 0].plot(epochs, [h["loss"] for h in history], label="total")
    ax[0, 0].plot(epochs, [h["attribute_loss"] for h in history], label="attribute InfoNCE")
    if any(h.get("text_loss") for h in history):
        ax[0, 0].plot(epochs, [h["text_loss"] for h in history], label="text InfoNCE")
    ax[0, 0].set_title("training loss")
    ax[0, 0].legend()
    ax[0, 1].plot(epochs, [h["val_metric"] for h in history], marker="o")
    ax[0, 1].set_title(f"validation {history[0]['val_metric_name'] if history else ''}")
    ax[1, 0].plot(epochs, [h["lr"] for h in history])
    ax[1, 0].set_title("learning rate (end of epoch)")
    ax[1, 1].plot(epochs, [h["positive_similarity"] for h in history], label="positive (own image)")
    ax[1, 1].plot(epochs, [h["negative_similarity"] for h in history], label="negative (other attributes)")
    ax[1, 1].set_title("validation cosine similarity")
    ax[1, 1].legend()
    for a in ax.flat:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def similarity_histogram(stats: dict, path: Path, title: str) -> None:
    bins = stats["histogram_bins"]
    centers = [(a + b) / 2 for a, b in itertools.pairwise(bins)]
    width = bins[1] - bins[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(
        centers,
        stats["positive_histogram"],
        width=width,
        alpha=0.6,
        label=f"positive (mean {stats['positive_mean']:.3f})",
    )
    ax.bar(
        centers,
        stats["negative_histogram"],
        width=width,
        alpha=0.6,
        label=f"negative (mean {stats['negative_mean']:.3f})",
    )
    ax.set_xlabel("cosine similarity")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def open_ref(ref: ImageRef) -> Image.Image:
    im = Image.open(ref.path)
    im.load()
    return im.crop(ref.box) if ref.box else im


def result_grid(
    query_label: str, query_image: ImageRef | None, results: list[tuple[ImageRef, str, float, bool]], path: Path
) -> None:
    """One row: the query (its own photo when it has one) then the top-k with id, score and relevance."""
    n = len(results) + 1
    fig, ax = plt.subplots(1, n, figsize=(2.2 * n, 3.4))
    if query_image is not None:
        ax[0].imshow(open_ref(query_image))
    ax[0].set_title("query", fontsize=9)
    for a, (ref, pid, score, relevant) in zip(ax[1:], results):
        a.imshow(open_ref(ref))
        a.set_title(f"{pid}\n{score:.3f}{' ✓' if relevant else ''}", fontsize=8, color="green" if relevant else "black")
    for a in ax:
        a.axis("off")
    fig.suptitle(query_label, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
