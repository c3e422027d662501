"""POST /api/events: customers' impressions, clicks, carts and purchases, stored durably and idempotently beside
the catalogue (recommend/events.py). A write: it needs the write scope when the server has an auth file."""

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from lookalike.errors import LookalikeError
from lookalike.service.deps import ServiceDep
from lookalike.service.forms import parse_json

MAX_BYTES = 1024 * 1024  # a batch of 1,000 events is ~250 KB
MAX_EVENTS = 1000

router = APIRouter(tags=["events"])
read_router = APIRouter(tags=["events"])

EXAMPLE = {
    "events": [
        {
            "event_id": "e-1",
            "customer_id": "c-42",
            "type": "click",
            "product_id": "6485",
            "ts": "2026-12-07T09:00:00Z",
            "request_id": "the request_id of the recommendation shown",
        }
    ]
}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes, announced or not."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"request body of {int(length)} bytes exceeds the {limit} byte limit of /api/events")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body exceeds the {limit} byte limit of /api/events")
    return bytes(body)


@router.post(
    "/api/events",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}, "example": EXAMPLE}},
        }
    },
)
async def post_events(request: Request, svc: ServiceDep):
    """Store events `{"events": [{event_id, customer_id, type: impression|click|cart|purchase, product_id, ts
    (ISO-8601), request_id?, variant?}]}`. Idempotent on event_id. Answers {accepted, duplicates, rejected: [{index,
    reason}]}; nothing of a rejected event is stored. 422 when every event was rejected."""
    body = await read_body(request, MAX_BYTES)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise LookalikeError("the body is not UTF-8 JSON") from None
    data = parse_json(text, "the body")
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise LookalikeError('the body must be a JSON object {"events": [...]}')
    events = data["events"]
    if not events:
        raise LookalikeError("events is empty")
    if len(events) > MAX_EVENTS:
        raise HTTPException(413, f"at most {MAX_EVENTS} events a request, got {len(events)}")
    res = (await run_in_threadpool(svc.events.add, events)).to_json()
    if res["rejected"] and not res["accepted"] and not res["duplicates"]:
        first = res["rejected"][0]
        detail = f"every event was rejected (event {first['index']}: {first['reason']})"
        return JSONResponse({"detail": detail, **res}, status_code=422)
    return res


@read_router.get("/api/experiments/{name}")
def experiment_report(name: str, svc: ServiceDep) -> dict:
    """The served A/B experiment: per variant lists served, CTR@10 and purchase rate with 95% intervals, the
    two-proportion test of each variant against the first, the minimum detectable effect and a too-early flag."""
    if svc.experiment is None or svc.experiment.name != name:
        served = f"the served experiment is {svc.experiment.name!r}" if svc.experiment else "no experiment is served"
        raise HTTPException(404, f"unknown experiment {name!r}: {served} (serve --experiment FILE)")
    return svc.experiment.report(svc.events.counters())
