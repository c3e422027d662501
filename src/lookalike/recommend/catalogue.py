"""The served catalogue: queries and products embedded into the trained space, and kept in a vector store.

Catalogue images go through the frozen image encoder the checkpoint was trained with (cached, as in
training, locally or on Ray) and the checkpoint's frozen projection; each product is stored as one item
(vector + attributes + is_new + image path), loaded in all-or-nothing batches (`VectorStore.load`).
"""

from __future__ import annotations

from pathlib import Path

from lookalike.catalogue import Catalogue, CatalogueSchema, ImageRef, Product
from lookalike.catalogue.schema import AttrValue
from lookalike.distributed import RayOptions
from lookalike.errors import LookalikeError
from lookalike.inference import QueryEncoder
from lookalike.recommend.newness import NewRule
from lookalike.recommend.statistics import FLAG
from lookalike.retrieval.stores import StoreItem, VectorStore

# metadata keys the service writes itself; attribute fields may not use them
RESERVED = {"is_new", "name", "image", "sales"}


def report_fields(
    enc: QueryEncoder, colour_field: str | None = None, category_field: str | None = None
) -> tuple[str | None, str | None]:
    """The category and colour fields the recommenders report on (and the store counts): `category_field` or
    else the checkpoint's category field, and `colour_field` or else baseColour where the model knows it."""
    schema = enc.schema
    fields = schema.fields if schema else enc.model.vocab.fields
    colour = colour_field or ("baseColour" if "baseColour" in fields else None)
    return category_field or (schema.category_field if schema else None), colour


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


def product_from_json(
    pid: str, attributes: dict, image_path: Path, text: str | None, schema: CatalogueSchema | None
) -> Product:
    """A product from the API/CLI: schema fields become attributes (strings / lists), other keys extras."""
    if not isinstance(attributes, dict):
        raise LookalikeError("attributes must be a JSON object")
    clash = RESERVED & set(attributes)
    if clash:  # the service sets these itself; accepting them would silently drop the caller's value
        raise LookalikeError(f"product {pid}: attribute names {sorted(clash)} are reserved by the service")
    list_fields = set(schema.list_fields) if schema else set()
    fields = set(schema.fields) if schema else set(attributes)
    attrs: dict[str, AttrValue] = {}
    extra: dict[str, str] = {}
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
    if (
        not isinstance(pid, str)
        or not pid.strip()
        or len(pid) > 200
        or not all(c.isprintable() for c in pid)
        or "/" in pid
        or "\\" in pid
        or pid in (".", "..")
    ):
        raise LookalikeError(f"product id {pid!r} must be 1-200 printable characters without slashes")
    return pid.strip()


def ingest_catalogue(
    store: VectorStore,
    cat: Catalogue,
    enc: QueryEncoder,
    rule: NewRule,
    progress: bool = True,
    ray: RayOptions | None = None,
    load_batch: int = 10_000,
) -> dict:
    """Embed every product image (frozen encoder, cached; on Ray with `ray`) and load them into the store in
    transactions of `load_batch` products: a product is stored with its vector and metadata or not at all,
    and a rerun after a failure re-embeds nothing (the cache) and upserts the rest."""
    from lookalike.encoders.embedding import embed_catalogue

    emb = embed_catalogue(cat, enc.cfg, progress, texts=False, ray=ray)
    products = emb.products
    metadata = [product_metadata(p, rule) for p in products]  # a reserved name fails before any write

    def batches():
        for s in range(0, len(products), load_batch):
            vectors = enc.features(emb.features[s : s + load_batch])
            yield [
                StoreItem(p.id, v, md)
                for p, v, md in zip(products[s : s + load_batch], vectors, metadata[s : s + load_batch])
            ]

    # the counts the service reads, kept from the first row on (declared later, they would need a recount)
    store.count_by([f for f in report_fields(enc) if f], flag=FLAG)
    written = store.load(batches(), total=len(products))
    n_new = sum(md["is_new"] for md in metadata)
    return {
        "ingested": written,
        "new": n_new,
        "established": len(products) - n_new,
        "rule": str(rule),
        "skipped": dict(emb.catalogue.report.skipped),
        "store_size": len(store),
        "engine": "ray" if ray else "local",
        "embedding": emb.timings,
    }
