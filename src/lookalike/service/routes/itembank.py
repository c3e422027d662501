"""The item bank: similar-question search (a read), list and read items and their figures (reads), and add,
replace and delete items (writes, under the same write scope as the catalogue's).

`POST /api/itembank/search` ranks through `rank_items` (itembank/live.py), the function `lookalike itembank
search` ranks through, so both give the same list and scores. Bad input (empty text, an unknown id, an
unreadable figure, a malformed filter) is answered 4xx naming it, and a failed write changes nothing
(service/itembank.py).
"""

import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from lookalike.errors import LookalikeError
from lookalike.itembank.live import ItemRecord
from lookalike.service.deps import CoreDep
from lookalike.service.forms import json_field, k_form
from lookalike.service.itembank import ItemBankService, check_item_id, check_labels, check_text
from lookalike.service.state import Core


async def get_bank(request: Request) -> ItemBankService:
    bank = request.app.state.service.itembank
    assert bank is not None, "create_app includes these routers only with an item bank"
    return bank


BankDep = Annotated[ItemBankService, Depends(get_bank)]
Labels = Annotated[str | None, Form(description='JSON list of labels, e.g. ["ratio", "grade 6"]')]


def render(r: ItemRecord) -> dict:
    return {
        "id": r.id,
        "text": r.text,
        "labels": list(r.labels),
        "figures": [f"/api/itembank/items/{r.id}/figures/{n}" for n in range(len(r.figures))],
    }


def record(bank: ItemBankService, item_id: str) -> ItemRecord:
    r = bank.index.get(item_id)
    if r is None:
        raise HTTPException(404, f"unknown item id {item_id!r}")
    return r


def read_router(max_k: int) -> APIRouter:
    router = APIRouter(tags=["item bank"])

    @router.post("/api/itembank/search")
    def search(
        bank: BankDep,
        core: CoreDep,
        id: Annotated[str | None, Form(description="an item of the bank as the query (itself left out)")] = None,
        text: Annotated[str | None, Form(description="a question's text as the query")] = None,
        image: Annotated[UploadFile | None, File(description="the question's figure (with text)")] = None,
        mode: Annotated[Literal["hybrid", "dense", "bm25", "rrf"], Form()] = "hybrid",
        alpha: Annotated[float | None, Form(ge=0, le=1, description="dense weight of the hybrid")] = None,
        normalisation: Annotated[Literal["minmax", "zscore"], Form(description="hybrid's per-query scaling")] = (
            "minmax"
        ),
        k: Annotated[int, k_form(max_k)] = 10,
        filters: Annotated[str | None, Form(description='JSON, e.g. {"labels": ["A", "B"]} (any of them)')] = None,
    ) -> dict:
        """Similar questions: the top-k items with their score and its parts (raw cosine and BM25)."""
        from lookalike.itembank.live import check_filters, rank_items

        flt = json_field(filters, "filters")
        check_filters(flt)
        if (id is None) == (text is None):
            raise LookalikeError("give exactly one query: id (an item of the bank) or text")
        figure = None
        if image is not None:
            from lookalike.inference import decode_image

            figure = decode_image(core.read_upload(image, "image"), f"image {image.filename!r}")
            if bank.settings.figures is None:
                raise LookalikeError(
                    f"image {image.filename!r}: this item bank embeds question text only (no figure fusion is set)"
                )
            if id is not None:
                raise LookalikeError(f"image {image.filename!r} goes with a text query, not with an item id")
        if id is not None:
            try:
                query = bank.index.query_of(id)
            except LookalikeError as e:
                raise HTTPException(404, str(e)) from None
        else:
            query = bank.text_query(check_text(text), None, embed=mode != "bm25", figure=figure)
        a = bank.settings.alpha if alpha is None else alpha
        hits = rank_items(bank.index, query, k, mode, a, normalisation, flt)
        return {
            "query": {"id": id} if id is not None else {"text": query_text(text)},
            "mode": mode,
            "alpha": a if mode == "hybrid" else None,
            "k": k,
            "items": [{**h.to_json(), **(render(h.record) if h.record else {})} for h in hits],
        }

    @router.get("/api/itembank/items")
    def list_items(
        bank: BankDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict:
        ids = bank.store.ids(offset, limit)  # one page, not every id
        return {
            "total": len(bank.index),
            "offset": offset,
            "items": [render(r) for r in map(bank.index.get, ids) if r is not None],
        }

    @router.get("/api/itembank/items/{item_id}")
    def get_item(bank: BankDep, item_id: str) -> dict:
        return render(record(bank, item_id))

    @router.get(
        "/api/itembank/items/{item_id}/figures/{n}",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}},
    )
    def figure(bank: BankDep, item_id: str, n: int):
        r = record(bank, item_id)
        if not 0 <= n < len(r.figures):
            raise HTTPException(404, f"item {item_id!r} has {len(r.figures)} figure(s); no figure {n}")
        path = Path(os.path.abspath(r.figures[n]))  # lexical check, as for catalogue images
        if not any(path.is_relative_to(root) for root in bank.roots):
            raise HTTPException(403, f"figure {n} of {item_id!r} lies outside the served folders")
        if not path.is_file():
            raise HTTPException(404, f"figure {n} of {item_id!r} is missing on disk")
        return FileResponse(path)

    return router


def query_text(text: str | None) -> str:
    return (text or "").strip()


write_router = APIRouter(tags=["item bank"])


def _figure(core: Core, f: UploadFile | None) -> tuple[bytes, str] | None:
    return None if f is None else (core.read_upload(f, "figure"), f.filename or "")


@write_router.post("/api/itembank/items", status_code=201)
def add_item(
    bank: BankDep,
    core: CoreDep,
    item_id: Annotated[str, Form(description="new item id")],
    text: Annotated[str | None, Form(description="the question's text")] = None,
    labels: Labels = None,
    figure: Annotated[UploadFile | None, File(description="the question's figure")] = None,
) -> dict:
    """Add a question: embedded and indexed for BM25 at once, committed in one store transaction."""
    iid = check_item_id(item_id)
    labs = check_labels(json_field(labels, "labels", list))
    return render(bank.write(iid, check_text(text), labs, _figure(core, figure), adding=True))


@write_router.put("/api/itembank/items/{item_id}")
def update_item(
    bank: BankDep,
    core: CoreDep,
    item_id: str,
    text: Annotated[str | None, Form(description="the question's new text")] = None,
    labels: Annotated[str | None, Form(description="JSON list of labels (omitted: kept)")] = None,
    figure: Annotated[UploadFile | None, File(description="a new figure (omitted: kept)")] = None,
) -> dict:
    """Replace a question's text (and labels, figure where given). Idempotent."""
    raw = json_field(labels, "labels", list)
    return render(
        bank.write(
            item_id, check_text(text), check_labels(raw), _figure(core, figure), adding=False, keep_labels=raw is None
        )
    )


@write_router.delete("/api/itembank/items/{item_id}")
def delete_item(bank: BankDep, item_id: str) -> dict:
    """Remove a question; it is gone from search at once."""
    bank.delete(item_id)
    return {"deleted": item_id}


metrics_router = APIRouter(tags=["monitoring"])


@metrics_router.get("/metrics", response_class=Response)
def metrics(core: CoreDep) -> Response:
    """Prometheus request counts and latencies per route, when the item bank is served alone (beside a
    catalogue, the catalogue's /metrics has them)."""
    return Response(core.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
