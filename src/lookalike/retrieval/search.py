"""Query-time search over a catalogue held in memory: attribute JSON, free text, an image or a product →
top-K products. Queries are encoded by `QueryEncoder` (as the service encodes them) and ranked by
`retrieval.ranking.rank` (as evaluation and the service rank), so `lookalike search`, the public API and
`/api/search` give one query the same list and scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.catalogue import CatalogueSchema
from lookalike.encoders.embedding import Embedded
from lookalike.errors import LookalikeError
from lookalike.inference import QueryEncoder
from lookalike.model import load_for_checkpoint
from lookalike.retrieval.ranking import Gallery, Rerank, rank


@dataclass
class Hit:
    id: str
    score: float
    attributes: dict
    image: str


class Searcher:
    """A trained model (its `QueryEncoder`) over an embedded catalogue. JSON and text queries rank with the
    hubness correction, images by plain cosine (the offsets are computed on the first corrected query)."""

    def __init__(self, encoder: QueryEncoder, emb: Embedded, rerank: Rerank | None = None):
        """`rerank`: S2's second stage orders each list's top candidates, as `serve --reranker` does."""
        self.enc, self.emb, self.rerank = encoder, emb, rerank
        self.gallery = Gallery(encoder.features(emb.features), [p.id for p in emb.products], encoder.hub_bias)
        self._row = {p.id: i for i, p in enumerate(emb.products)}

    @classmethod
    def open(
        cls,
        model: QueryEncoder | str | Path,
        catalog: str | Path,
        cache_dir: str | None = None,
        progress: bool = True,
        schema: CatalogueSchema | None = None,
    ) -> Searcher:
        """A checkpoint (or a loaded `QueryEncoder`) over a catalogue, embedded with the encoders the model
        was trained with (the embedding cache makes a second open cheap)."""
        enc = model if isinstance(model, QueryEncoder) else QueryEncoder.load(model, cache_dir)
        emb, _ = load_for_checkpoint(
            enc.model, enc.payload, str(catalog), schema, cache_dir, progress, enc.cfg.encoder.device
        )
        return cls(enc, emb)

    def search(self, vector: np.ndarray, k: int = 10, corrected: bool = False, exclude: int = -1) -> list[Hit]:
        """Top-k for a query vector of the served space; `exclude`: a catalogue row left out, or -1."""
        if not 1 <= k <= len(self.gallery):
            raise LookalikeError(f"k must be between 1 and {len(self.gallery)}, got {k}")
        ex = np.array([exclude]) if exclude >= 0 else None
        top = rank(vector, self.gallery, k, corrected=corrected, exclude=ex, rerank=self.rerank)[0]
        assert top.rows is not None  # an in-memory gallery's list has rows
        products = self.emb.products
        return [
            Hit(products[j].id, float(s), products[j].attributes, str(products[j].image.path))
            for j, s in zip(top.rows, top.scores)
        ]

    def by_attributes(self, attributes: dict, k: int = 10) -> tuple[list[Hit], dict[str, list[str]], list[str]]:
        """Top-k for an attribute JSON, the values the model never saw (searched as unknown) and the fields
        it ignored, read exactly as the service reads a query (`query_attributes`)."""
        vector, unknown, ignored = self.enc.attributes(attributes)
        return self.search(vector, k, corrected=True), unknown, ignored

    def by_text(self, text: str, k: int = 10) -> list[Hit]:
        return self.search(self.enc.text(text), k, corrected=True)

    def by_image(self, image: str | Path | bytes | Image.Image, k: int = 10) -> list[Hit]:
        """An image file, its bytes or a PIL image, decoded as the service decodes an upload."""
        return self.search(self.enc.image(image), k)

    def by_product(self, product_id: str, k: int = 10) -> list[Hit]:
        """Image → image from a catalogue product (a clicked item); the product itself is excluded."""
        if product_id not in self._row:
            raise LookalikeError(f"unknown product id {product_id!r}")
        i = self._row[product_id]
        return self.search(self.gallery.vectors_at(np.array([i]))[0], k, exclude=i)


def open_catalogue(
    model: QueryEncoder | str | Path,
    catalog: str | Path,
    cache_dir: str | None = None,
    progress: bool = False,
    schema: CatalogueSchema | None = None,
) -> Searcher:
    """A trained model (a checkpoint path or `lookalike.load_model(...)`) over a catalogue, ready to search
    (`lookalike.open_catalogue`)."""
    return Searcher.open(model, catalog, cache_dir, progress, schema)
