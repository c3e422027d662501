"""The served catalogue: queries and products embedded into the trained space, and kept in a vector store.

Catalogue images go through the frozen image encoder the checkpoint was trained with (cached, as in
training, locally or on Ray) and the checkpoint's frozen projection; each product is stored as one item
(vector + attributes + is_new + image path), loaded in all-or-nothing batches (`VectorStore.load`).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.catalogue import Catalogue, CatalogueSchema, ImageRef, Product
from lookalike.distributed import RayOptions
from lookalike.errors import LookalikeError
from lookalike.model import LookalikeModel
from lookalike.recommend.newness import NewRule
from lookalike.retrieval.stores import StoreItem, VectorStore

# metadata keys the service writes itself; attribute fields may not use them
RESERVED = {"is_new", "name", "image", "sales"}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class QueryEncoder:
    """A trained checkpoint plus its frozen encoders: attribute JSON, text and images → the served space."""

    def __init__(self, model: LookalikeModel, payload: dict, cache_dir: str | None = None):
        from lookalike.pipeline import checkpoint_schema

        self.model, self.payload = model, payload
        cfg = model.config
        if cache_dir:
            cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"cache_dir": cache_dir})})
        self.cfg = cfg
        self.schema: CatalogueSchema | None = checkpoint_schema(payload)
        self._image = self._text = None
        self._bank: np.ndarray | None = None
        self._offsets: dict[bytes, float] = {}  # vector digest → hubness offset
        self.last_norms: list[float] = []  # raw tower output norms, for the embedding-health KPI

    @classmethod
    def load(cls, checkpoint: str | Path, cache_dir: str | None = None) -> "QueryEncoder":
        model, payload = LookalikeModel.load(checkpoint)
        return cls(model, payload, cache_dir)

    @property
    def dim(self) -> int:
        return self.model.out_dim

    def hub_bias(self, vectors: np.ndarray) -> np.ndarray | None:
        """Score offsets of stored vectors for JSON and text queries: the hubness correction evaluation and
        `lookalike search` rank with (None when the checkpoint has it off or carries no training queries).

        An offset depends on the vector alone, so each is computed once and remembered by the vector's
        digest: 200 new candidates cost ~145 ms on one core against a 28k-query bank, known ones nothing."""
        if not self.model.config.retrieval.hubness_weight or self.model.query_bank is None:
            return None
        if self._bank is None:
            self._bank = self.model.query_bank_vectors()
        vectors = np.ascontiguousarray(vectors, np.float32)
        keys = [hashlib.sha1(v.tobytes()).digest() for v in vectors]
        missing = [i for i, key in enumerate(keys) if key not in self._offsets]
        if missing:
            for i, o in zip(missing, self.model.gallery_bias(vectors[missing], self._bank)):
                self._offsets[keys[i]] = float(o)
        return np.array([self._offsets[key] for key in keys], np.float32)

    def _record(self, v: np.ndarray) -> np.ndarray:
        self.last_norms = [*self.last_norms[-999:], *np.linalg.norm(v, axis=1).tolist()]
        return unit(v)

    def images(self, images: list[Image.Image]) -> np.ndarray:
        if self._image is None:
            from lookalike.pipeline import image_encoder

            self._image = image_encoder(self.cfg)
        return unit(self.model.space.transform(self._image.encode_images(images)))

    def features(self, features: np.ndarray) -> np.ndarray:
        """Frozen backbone features (e.g. from the embedding cache) → the served space."""
        return unit(self.model.space.transform(features))

    def attributes(self, attributes: dict) -> tuple[np.ndarray, dict[str, list[str]], list[str]]:
        """Vector of an attribute JSON query, the values the model never saw (searched as unknown), and
        the fields it ignored (see `query_attributes`)."""
        query, ignored = query_attributes(attributes, self.model.vocab.fields)
        vector = self._record(self.model.encode_attributes([query]))[0]
        return vector, self.model.vocab.unknown_values(query), ignored

    def text(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise LookalikeError("text query is empty")
        if self._text is None:
            from lookalike.encoders.registry import create_text_encoder

            self._text = create_text_encoder(self.cfg.encoder.text_model)
        return self._record(self.model.encode_sentence_vectors(self._text.encode([text])))[0]


def query_attributes(attributes: dict, fields: list[str]) -> tuple[dict, list[str]]:
    """The part of a JSON query the towers use, and the fields left out, so a product's own JSON (with
    year, is_new, name …) is a valid query. Fields the towers do not use are ignored whatever their value,
    as are nulls; a number in a used field means its text, as when the product was stored (2017 → "2017")."""
    if not isinstance(attributes, dict) or not attributes:
        raise LookalikeError("an attribute query must be a non-empty JSON object of field → value(s)")
    used, query, ignored = set(fields), {}, []
    for f, v in attributes.items():
        if f not in used or v is None:
            ignored.append(f)
        elif isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            query[f] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            query[f] = str(v)
        else:
            raise LookalikeError(f"attribute {f!r} must be a string, a number or a list of strings, got {v!r}")
    if not query:
        raise LookalikeError(f"attribute query has no known field; got {sorted(attributes)}, "
                             f"expected some of {sorted(used)}")
    return query, sorted(ignored)


def decode_image(data: bytes, what: str = "upload") -> Image.Image:
    """A fully decoded RGB image, or a LookalikeError naming what is wrong with it."""
    if not data:
        raise LookalikeError(f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise LookalikeError(f"{what} is not a readable image: {e}") from None


def product_metadata(p: Product, rule: NewRule) -> dict:
    clash = RESERVED & set(p.attributes)
    if clash:
        raise LookalikeError(f"product {p.id}: attribute names {sorted(clash)} are reserved by the service")
    md: dict = dict(p.attributes)
    raw = rule.raw(p)
    if rule.field not in md and raw not in (None, ""):
        try:
            x = float(raw)
            md[rule.field] = int(x) if x.is_integer() else x
        except (TypeError, ValueError):
            md[rule.field] = str(raw)
    md["is_new"] = rule.is_new(p)
    md["image"] = str(p.image.path)
    if p.text:
        md["name"] = p.text
    if p.sales is not None:
        md["sales"] = float(p.sales)
    return md


def product_from_json(pid: str, attributes: dict, image_path: Path, text: str | None,
                      schema: CatalogueSchema | None) -> Product:
    """A product from the API/CLI: schema fields become attributes (strings / lists), other keys extras."""
    if not isinstance(attributes, dict):
        raise LookalikeError("attributes must be a JSON object")
    clash = RESERVED & set(attributes)
    if clash:  # the service sets these itself; accepting them would silently drop the caller's value
        raise LookalikeError(f"product {pid}: attribute names {sorted(clash)} are reserved by the service")
    list_fields = set(schema.list_fields) if schema else set()
    fields = set(schema.fields) if schema else set(attributes)
    attrs, extra = {}, {}
    for k, v in attributes.items():
        if k in fields:
            if k in list_fields:
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise LookalikeError(f"attribute {k!r} is a list field: give a list of strings, got {v!r}")
                attrs[k] = v
            elif isinstance(v, (str, int, float)) and not isinstance(v, bool):
                attrs[k] = str(v)
            else:
                raise LookalikeError(f"attribute {k!r} must be a string, got {v!r}")
        elif isinstance(v, (str, int, float)) and not isinstance(v, bool):
            extra[k] = str(v)
        else:
            raise LookalikeError(f"attribute {k!r} must be a string or a number, got {v!r}")
    if schema and not attrs:
        raise LookalikeError(f"attributes name none of the catalogue's fields {schema.fields}")
    return Product(pid, ImageRef(image_path), attrs, text or "", None, extra)


def check_id(pid: str) -> str:
    if not isinstance(pid, str) or not pid.strip() or len(pid) > 200 or not all(c.isprintable() for c in pid) \
            or "/" in pid or "\\" in pid or pid in (".", ".."):
        raise LookalikeError(f"product id {pid!r} must be 1-200 printable characters without slashes")
    return pid.strip()


def ingest_catalogue(store: VectorStore, cat: Catalogue, enc: QueryEncoder, rule: NewRule,
                     progress: bool = True, ray: RayOptions | None = None, load_batch: int = 10_000) -> dict:
    """Embed every product image (frozen encoder, cached; on Ray with `ray`) and load them into the store in
    transactions of `load_batch` products: a product is stored with its vector and metadata or not at all,
    and a rerun after a failure re-embeds nothing (the cache) and upserts the rest."""
    from lookalike.pipeline import embed_catalogue

    emb = embed_catalogue(cat, enc.cfg, progress, texts=False, ray=ray)
    products = emb.products
    metadata = [product_metadata(p, rule) for p in products]  # a reserved name fails before any write

    def batches():
        for s in range(0, len(products), load_batch):
            vectors = enc.features(emb.features[s:s + load_batch])
            yield [StoreItem(p.id, v, md) for p, v, md in zip(products[s:s + load_batch], vectors, metadata[s:s + load_batch])]

    written = store.load(batches(), total=len(products))
    n_new = sum(md["is_new"] for md in metadata)
    return {"ingested": written, "new": n_new, "established": len(products) - n_new, "rule": str(rule),
            "skipped": dict(emb.catalogue.report.skipped), "store_size": len(store),
            "engine": "ray" if ray else "local", "embedding": emb.timings}
