"""The catalogue: list, read and serve the images of products (reads), and add, replace and delete them (writes).

A failed write changes nothing. An added image is in place under its final name before the store commit
that refers to it, and an old one is removed only after (see uploads.py), so no product is ever served
without its image. `create_app` guards the two routers apart: reads with a read token where the settings
ask for one, writes with a write token whenever there is an auth file.
"""

import functools
import io
import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, Response
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.inference import decode_image
from lookalike.recommend.catalogue import check_id, product_from_json, product_metadata
from lookalike.retrieval.stores import StoreItem
from lookalike.service.deps import ServiceDep
from lookalike.service.forms import json_field
from lookalike.service.state import Service
from lookalike.service.tuning import view_png

read_router = APIRouter(tags=["catalogue"])
write_router = APIRouter(tags=["catalogue"])


@read_router.get("/api/items")
def list_items(
    svc: ServiceDep, offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict:
    items = svc.store.get_many(svc.store.ids(offset, limit))  # one page, not every id
    return {
        "total": len(svc.store),
        "offset": offset,
        "items": [svc.render(it.id, it.metadata) for it in items if it is not None],
    }


@read_router.get("/api/items/{product_id}")
def get_item(svc: ServiceDep, product_id: str) -> dict:
    it = svc.item(product_id)
    return svc.render(it.id, it.metadata)


@read_router.get(
    "/api/items/{product_id}/image",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}}},
)
def item_image(svc: ServiceDep, product_id: str):
    return FileResponse(_image_path(svc, product_id))


def _image_path(svc: Service, product_id: str) -> Path:
    # Lexical check (no symlink resolution): a catalogue's image folder may itself be a link.
    path = Path(os.path.abspath(str(svc.item(product_id).metadata.get("image", ""))))
    if not any(path.is_relative_to(r) for r in svc.image_roots):
        raise HTTPException(403, f"image of {product_id!r} lies outside the served image roots")
    if not path.is_file():
        raise HTTPException(404, f"image of {product_id!r} is missing on disk")
    return path


@read_router.get(
    "/api/items/{product_id}/views/{view}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def item_view(svc: ServiceDep, product_id: str, view: int) -> Response:
    """Augmented view `view` of the product's image, as training rendered it before embedding and caching it
    (flip, rotation, colour jitter, crop; `augment.image_views` of them per image, seeded by the image's content)."""
    aug = svc.enc.cfg.augment
    if not 0 <= view < aug.image_views:
        raise HTTPException(404, f"the served model trained with {aug.image_views} image views: no view {view}")
    path = _image_path(svc, product_id)
    st = path.stat()
    try:
        png = _view(str(path), st.st_mtime_ns, st.st_size, view, aug.view_seed)
    except (OSError, ValueError, SyntaxError) as e:  # an image PIL cannot read
        raise HTTPException(422, f"image of {product_id!r} cannot be read: {e}") from None
    return Response(png, media_type="image/png")


@functools.lru_cache(maxsize=64)
def _view(path: str, mtime_ns: int, size: int, view: int, seed: int) -> bytes:
    """One rendering per version of the file (the dashboard asks for the same views on every refresh)."""
    return view_png(Path(path), view, seed)


def write_product(
    svc: Service, pid: str, attributes: str, image: UploadFile | None, text: str | None, adding: bool
) -> dict:
    """Validate and embed outside the lock; place the image, commit, then drop the replaced image."""
    attrs = json_field(attributes, "attributes")
    if attrs is None:
        raise LookalikeError("attributes (a JSON object) is required")
    staged = None
    if image is not None:
        data = svc.read_upload(image, "image")
        im = decode_image(data, f"image {image.filename!r}")
        ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}.get(
            Image.open(io.BytesIO(data)).format or "", ".img"
        )
        final = svc.uploads.final_path(pid, data, ext)
        md = product_metadata(product_from_json(pid, attrs, final, text, svc.enc.schema), svc.rule)
        staged = (final, data, svc.enc.images([im])[0])
    with svc.write_lock:  # the existence check and the commit see the same state
        current = svc.store.get(pid)
        if adding and current is not None:
            raise HTTPException(409, f"product {pid!r} exists; update it with PUT /api/items/{pid}")
        if not adding and current is None:
            raise HTTPException(404, f"unknown product id {pid!r}")
        old = str(current.metadata.get("image", "")) if current else None
        if staged is None:
            if current is None:  # the add route requires an image
                raise LookalikeError("an image is required to add a product")
            image_path = Path(str(current.metadata.get("image", "")))  # the product keeps its image
            md = product_metadata(product_from_json(pid, attrs, image_path, text, svc.enc.schema), svc.rule)
            item = StoreItem(pid, current.vector, md)
            svc.store.upsert([item])
        else:
            final, data, vector = staged
            item = StoreItem(pid, vector, md)
            with svc.uploads.staged(final, data, keep=old):
                svc.store.upsert([item])
        svc.mirror(item)  # an experiment's compact stores
    if staged is not None and old and os.path.abspath(old) != str(staged[0]):
        svc.uploads.remove(old)  # the replaced image, only once the new row is committed
    return svc.render(pid, md)


@write_router.post("/api/items", status_code=201)
def add_item(
    svc: ServiceDep,
    product_id: Annotated[str, Form(description="new product id")],
    attributes: Annotated[str, Form(description="attribute JSON (catalogue fields, plus e.g. year)")],
    image: Annotated[UploadFile, File(description="product image")],
    text: Annotated[str | None, Form(description="product name / description")] = None,
) -> dict:
    """Add a product: its image is embedded with the frozen encoder; vector + metadata in one transaction."""
    return write_product(svc, check_id(product_id), attributes, image, text, adding=True)


@write_router.put("/api/items/{product_id}")
def update_item(
    svc: ServiceDep,
    product_id: str,
    attributes: Annotated[str, Form(description="attribute JSON (replaces all)")],
    image: Annotated[UploadFile | None, File(description="new image (optional)")] = None,
    text: Annotated[str | None, Form()] = None,
) -> dict:
    """Replace a product's attributes (and image, if given). Idempotent."""
    return write_product(svc, product_id, attributes, image, text, adding=False)


@write_router.delete("/api/items/{product_id}")
def delete_item(svc: ServiceDep, product_id: str) -> dict:
    """Remove a product; it is gone from search at once."""
    with svc.write_lock:
        image = str(svc.item(product_id).metadata.get("image", ""))
        if not svc.store.delete([product_id]):
            raise HTTPException(404, f"unknown product id {product_id!r}")
        svc.mirror(None, deleted=product_id)
    svc.uploads.remove(image)  # only an image the API stored; catalogue images are never touched
    return {"deleted": product_id}
