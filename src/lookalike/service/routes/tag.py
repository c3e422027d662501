"""Image → attributes: /api/tag (an uploaded photo, or a stored product's own photo)."""

import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from lookalike.errors import LookalikeError
from lookalike.inference import decode_image
from lookalike.service.deps import ServiceDep

router = APIRouter(tags=["tag"])


@router.post("/api/tag")
def tag(
    svc: ServiceDep,
    image: Annotated[UploadFile | None, File(description="a product photo")] = None,
    product_id: Annotated[str | None, Form(description="a stored product: its own photo is tagged")] = None,
) -> dict:
    """Every attribute of the schema predicted from the photo: value, calibrated confidence, alternatives
    (list fields: the values with probability ≥ 0.5, and per-value probabilities). A stored product is
    tagged without its own label's vote, so the answer can be compared with what it holds."""
    if (image is None) == (not product_id):
        raise LookalikeError("give exactly one of image (file upload) or product_id")
    tagger = svc.image_tagger()
    if image is not None:
        im = decode_image(svc.read_upload(image, "image"), f"image {image.filename!r}")
        return {"query": {"image": image.filename}, "attributes": tagger.tag([im])[0]}
    assert product_id  # exactly one of the two (checked above)
    item = svc.item(product_id)
    path = Path(os.path.abspath(str(item.metadata.get("image", ""))))
    if not any(path.is_relative_to(r) for r in svc.image_roots):
        raise HTTPException(403, f"image of {product_id!r} lies outside the served image roots")
    try:
        data = path.read_bytes()
    except OSError:
        raise HTTPException(404, f"image of {product_id!r} is missing on disk") from None
    im = decode_image(data, f"image of {product_id!r}")
    attributes = tagger.tag([im], exclude_ids=[product_id], vectors=item.vector[None, :])[0]
    stored = {k: v for k, v in item.metadata.items() if k in attributes}
    return {"query": {"product_id": product_id}, "attributes": attributes, "stored": stored}
