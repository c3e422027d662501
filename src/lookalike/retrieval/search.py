"""Query-time search on a trained model: attribute JSON, free text or an image → top-K gallery products."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.encoders.embedding import Embedded, image_encoder
from lookalike.encoders.registry import create_text_encoder
from lookalike.errors import LookalikeError
from lookalike.model import LookalikeModel, load_for_checkpoint
from lookalike.retrieval.exact import exact_topk


@dataclass
class Hit:
    id: str
    score: float
    attributes: dict
    image: str


class Searcher:
    def __init__(self, model: LookalikeModel, emb: Embedded, cfg):
        self.model, self.emb, self.cfg = model, emb, cfg
        self.gallery = model.space.transform(emb.features)
        self._text = None
        self._image = None
        self._bias: np.ndarray | None = None

    @classmethod
    def open(cls, checkpoint: str, catalog: str, cache_dir: str | None = None, progress: bool = True) -> Searcher:
        model, payload = LookalikeModel.load(checkpoint)
        emb, cfg = load_for_checkpoint(model, payload, catalog, cache_dir=cache_dir, progress=progress)
        return cls(model, emb, cfg)

    def bias(self) -> np.ndarray | None:
        """The gallery's hubness correction for JSON and text queries (as in evaluation), computed once."""
        if self._bias is None:
            self._bias = self.model.gallery_bias(self.gallery)
        return self._bias

    def _hits(self, q: np.ndarray, k: int, exclude: int = -1, bias: np.ndarray | None = None) -> list[Hit]:
        if not 1 <= k <= len(self.gallery):
            raise LookalikeError(f"k must be between 1 and {len(self.gallery)}, got {k}")
        idx, scores = exact_topk(
            q[None, :], self.gallery, k, exclude=np.array([exclude]) if exclude >= 0 else None, bias=bias
        )
        return [
            Hit(
                self.emb.products[j].id, float(s), self.emb.products[j].attributes, str(self.emb.products[j].image.path)
            )
            for j, s in zip(idx[0], scores[0])
        ]

    def by_attributes(self, attributes: dict, k: int = 10) -> tuple[list[Hit], dict[str, list[str]], list[str]]:
        """Top-k for an attribute JSON, the values the model never saw (searched as unknown) and the fields
        it ignored, read exactly as the service reads a query (`query_attributes`)."""
        from lookalike.inference import query_attributes

        query, ignored = query_attributes(attributes, self.model.vocab.fields)
        hits = self._hits(self.model.encode_attributes([query])[0], k, bias=self.bias())
        return hits, self.model.vocab.unknown_values(query), ignored

    def by_text(self, text: str, k: int = 10) -> list[Hit]:
        if not text.strip():
            raise LookalikeError("text query is empty")
        if self._text is None:
            self._text = create_text_encoder(self.cfg.encoder.text_model)
        return self._hits(self.model.encode_sentence_vectors(self._text.encode([text]))[0], k, bias=self.bias())

    def by_image(self, image: str | Path | Image.Image, k: int = 10) -> list[Hit]:
        if not isinstance(image, Image.Image):
            try:
                with Image.open(image) as im:
                    im.load()
                    image = im.copy()
            except FileNotFoundError:
                raise LookalikeError(f"image not found: {image}") from None
            except (UnidentifiedImageError, OSError) as e:
                raise LookalikeError(f"cannot decode image {image}: {e}") from None
        if self._image is None:
            self._image = image_encoder(self.cfg)
        features = self._image.encode_images([image])
        return self._hits(self.model.space.transform(features)[0], k)

    def by_product(self, product_id: str, k: int = 10) -> list[Hit]:
        """Image → image from a catalogue product (a clicked item); the product itself is excluded."""
        ids = {p.id: i for i, p in enumerate(self.emb.products)}
        if product_id not in ids:
            raise LookalikeError(f"unknown product id {product_id!r}")
        i = ids[product_id]
        return self._hits(self.gallery[i], k, exclude=i)
