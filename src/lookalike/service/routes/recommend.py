"""The recommenders: /api/recommend/customer_input and /api/recommend/top10_to_new."""

import json
import time
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from lookalike.errors import LookalikeError
from lookalike.recommend.events import parse_ts
from lookalike.recommend.profile import PROFILES, History
from lookalike.service.deps import ServiceDep
from lookalike.service.forms import Diversity, Filters, json_field, k_form, parse_json, parse_sales_csv
from lookalike.service.state import Service

Profile = Literal["multi-interest", "mean", "tower"]
HISTORY_EVENTS = ("view", "click", "cart", "purchase")
LOGGED_HISTORY = 50  # a customer_id alone: its latest events (other than impressions) are the history
HISTORY_SCHEMA = {
    "type": "object",
    "properties": {
        "history": {
            "type": "array",
            "items": {
                "type": "object",
                "description": '{"product_id", "event": view|click|cart|purchase, "ts": ISO-8601} | {"text"} | '
                '{"attributes": {...}}',
            },
        },
        "k": {"type": "integer"},
        "customer_id": {"type": "string"},
        "diversity": {"type": "number"},
        "profile": {"type": "string", "enum": list(PROFILES)},
        "filters": {"type": "object"},
    },
}


def _ids(raw: str | None) -> list[str]:
    return [i.strip() for i in (raw or "").split(",") if i.strip()]


@dataclass
class HistoryAsk:
    """What a customer_input request asks, from its form fields or its JSON body."""

    entries: list[dict]
    images: list[UploadFile] = field(default_factory=list)
    k: int = 10
    customer_id: str | None = None
    profile: str | None = None
    filters: dict | None = None
    diversity: float = 0.0
    tags: bool = False  # with photos: also their predicted attributes

    @classmethod
    def from_json(cls, body: object, max_k: int) -> "HistoryAsk":
        if not isinstance(body, dict):
            raise LookalikeError("the body must be a JSON object with a history (or a customer_id)")
        unknown = sorted(set(body) - {"history", "k", "customer_id", "diversity", "profile", "filters"})
        if unknown:
            raise LookalikeError(f"unknown field(s) {unknown} in the body")
        history = body.get("history", [])
        if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
            raise LookalikeError("history must be a list of objects")
        k = body.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
            raise LookalikeError(f"k must be an integer from 1 to {max_k}, got {k!r}")
        diversity = body.get("diversity", 0.0)
        if not isinstance(diversity, (int, float)) or isinstance(diversity, bool) or not 0 <= diversity <= 1:
            raise LookalikeError(f"diversity must be a number from 0 to 1, got {diversity!r}")
        profile = body.get("profile")
        if profile is not None and profile not in PROFILES:
            raise LookalikeError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
        customer = body.get("customer_id")
        if customer is not None and not isinstance(customer, str):
            raise LookalikeError("customer_id must be a string")
        filters = body.get("filters")
        if filters is not None and not isinstance(filters, dict):
            raise LookalikeError("filters must be a JSON object")
        return cls(history, [], k, customer, profile, filters, float(diversity))


def _history(svc: Service, ask: HistoryAsk) -> tuple[History, dict, list[dict | None]]:
    """The history's vectors (products from the store, photos and queries through the model), the `query`
    the response describes it by, and the photos' tags when asked (null without a tagger)."""
    now = time.time()
    entries = list(ask.entries)
    from_log = False
    if not entries and not ask.images:
        if not ask.customer_id:
            raise LookalikeError(
                "give a history: product_id(s), image(s), text, attributes, a JSON history, or a customer_id"
            )
        logged = svc.events.history(ask.customer_id, LOGGED_HISTORY)
        if not logged:
            raise HTTPException(404, f"customer {ask.customer_id!r} has no logged events to recommend from")
        entries = [{"product_id": p, "event": t, "_ts": ts} for p, t, ts in logged]
        from_log = True
    pids = [e["product_id"] for e in entries if "product_id" in e]
    if not all(isinstance(p, str) and p for p in pids):
        raise LookalikeError("every product_id of the history must be a non-empty string")
    found = {it.id: it for it in svc.store.get_many(list(dict.fromkeys(pids))) if it is not None}
    missing = [p for p in dict.fromkeys(pids) if p not in found]
    if missing:
        raise HTTPException(
            404,
            f"unknown product id(s) {missing[:10]} in the history"
            if len(pids) > 1
            else f"unknown product id {missing[0]!r}",
        )
    vectors, types, times, labels, products = [], [], [], [], []
    for n, e in enumerate(entries):
        if "product_id" in e:
            event = e.get("event", "click")
            if event not in HISTORY_EVENTS:
                raise LookalikeError(f"history[{n}]: unknown event {event!r} (one of {', '.join(HISTORY_EVENTS)})")
            vectors.append(found[e["product_id"]].vector)
            labels.append(e["product_id"])
            products.append(e["product_id"])
            if "_ts" in e:
                times.append(e["_ts"])
            else:
                try:
                    times.append(parse_ts(e["ts"], now) if e.get("ts") is not None else None)
                except ValueError as err:
                    raise LookalikeError(f"history[{n}]: {err}") from None
            types.append(event)
        elif "text" in e:
            vectors.append(svc.enc.text(e["text"]))
            labels.append(f"text {str(e['text'])[:60]}")
        elif "attributes" in e:
            if not isinstance(e["attributes"], dict):
                raise LookalikeError(f"history[{n}]: attributes must be a JSON object")
            vectors.append(svc.enc.attributes(e["attributes"])[0])
            labels.append(f"attributes {json.dumps(e['attributes'], ensure_ascii=False)[:60]}")
        else:
            raise LookalikeError(f"history[{n}] needs a product_id, text or attributes")
        if "product_id" not in e:
            types.append("query")
            times.append(None)
            products.append(None)
    photo_tags: list[dict | None] = []
    for f in ask.images:
        im = svc.decode_upload(f)
        vectors.append(svc.enc.images([im])[0])
        if ask.tags:
            tagged = svc.has_tagger and svc.image_tagger().tag([im], vectors=vectors[-1][None, :])[0]
            photo_tags.append(tagged or None)
        types.append("query")
        times.append(None)
        labels.append(f"image {f.filename}")
        products.append(None)
    history = History(np.stack(vectors).astype(np.float32), types, times, labels, products)
    if len(labels) == 1 and not from_log and (products[0] or ask.images):
        query: dict = {"product_id": products[0]} if products[0] else {"image": ask.images[0].filename}
    else:
        query = {"history": len(labels), **({"customer_id": ask.customer_id} if ask.customer_id else {})}
        query["from"] = "logged events" if from_log else "request"
    return history, query, photo_tags


def _recommend_history(request: Request, svc: Service, ask: HistoryAsk) -> dict:
    svc.rec.require_products()
    history, query, photo_tags = _history(svc, ask)
    profile, diversity, variant = ask.profile or svc.settings.profile, ask.diversity, None
    rec, enc, reranker = svc.rec, svc.enc, None
    if svc.experiment is not None and ask.customer_id:  # the customer's variant decides (sticky by customer)
        v = svc.experiment.assign(ask.customer_id)
        profile = v.profile or profile
        diversity = v.diversity if v.diversity is not None else diversity
        reranker = v.reranker
        variant = svc.experiment.label(v)
        compact = svc.compact.get(v.name)
        if compact is not None:  # the 128-d variant: its store, the history mapped by its adapter
            rec, enc = compact.rec, compact.enc
            history = replace(history, vectors=enc.adapt(history.vectors))
    res = rec.for_history(
        history,
        ask.k,
        profile,
        svc.profile_settings,
        ask.filters,
        diversity,
        exclude_ids=[p for p in dict.fromkeys(history.product_ids) if p],
        tower=svc.user_tower,
        rerank=svc.reranking(diversity, reranker),
    )
    svc.metrics.observe_results("customer_input", [res], recommended_new=True)
    what = (
        f"product {query['product_id']}"
        if "product_id" in query
        else f"photo {query['image']}"
        if "image" in query
        else f"history of {query['history']} ({profile})"
    )
    svc.remember(f"customer_input: {what}", res)
    rid = svc.served(request, "customer_input", [i for i, _, _ in res["items"]], variant, ask.customer_id)
    listed = svc.render_list(res)
    for item, j in zip(listed["items"], res["item_interests"]):
        item["interest"] = j
    out = {
        "request_id": rid,
        "query": query,
        "profile": profile,
        "interests": res["interests"],
        **listed,
        "ranking": svc.ranking_path(res, enc),
    }
    if photo_tags:  # one photo: its tags; several: one per photo, in order
        out["tags"] = photo_tags[0] if len(photo_tags) == 1 else photo_tags
    return {**out, "variant": variant} if variant else out


def _sales_figures(svc: Service, sales: str | None, sales_csv: UploadFile | None) -> dict | None:
    """Units sold per product, given as JSON or as a CSV upload; None when neither is given."""
    if sales:
        return json_field(sales, "sales")
    if sales_csv is not None:
        return parse_sales_csv(svc.read_upload(sales_csv, "sales_csv"), sales_csv.filename or "sales_csv")
    return None


def router(max_k: int) -> APIRouter:
    """The recommenders' routes; `max_k` bounds the k fields (validated, and shown in the OpenAPI schema)."""
    K = Annotated[int, k_form(max_k)]
    routes = APIRouter(tags=["recommend"])

    @routes.post(
        "/api/recommend/customer_input",
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": HISTORY_SCHEMA}}}},
    )
    async def customer_input(
        request: Request,
        svc: ServiceDep,
        image: Annotated[list[UploadFile] | None, File(description="customer photos (repeatable)")] = None,
        product_id: Annotated[str | None, Form(description="a clicked product")] = None,
        product_ids: Annotated[str | None, Form(description="clicked products, comma-separated, oldest first")] = None,
        text: Annotated[str | None, Form(description="a text query, part of the history")] = None,
        attributes: Annotated[str | None, Form(description="an attribute JSON query, part of the history")] = None,
        customer_id: Annotated[
            str | None, Form(description="a customer: alone, that customer's logged events are the history")
        ] = None,
        profile: Annotated[Profile | None, Form(description="multi-interest (default) or mean")] = None,
        k: K = 10,
        filters: Filters = None,
        diversity: Diversity = 0.0,
        tags: Annotated[bool, Form(description="with an image: also return the photo's predicted attributes")] = False,
    ) -> dict:
        """The top-K *new* products for a customer: one photo or clicked product, or a history (product ids, photos,
        text, attributes; or a JSON body {"history": [{"product_id", "event", "ts"} | {"text"} | {"attributes"}],
        "k", "customer_id", "diversity", "profile", "filters"}; or a customer_id alone, whose logged events are the
        history). Multi-interest by default: each result names the interest it came from."""
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            ask = HistoryAsk.from_json(parse_json((await request.body()).decode("utf-8", "replace"), "the body"), max_k)
        else:
            ask = HistoryAsk(
                entries=[{"product_id": p} for p in _ids(product_ids)]
                + ([{"product_id": product_id}] if product_id else [])
                + ([{"text": text}] if text else [])
                + ([{"attributes": json_field(attributes, "attributes")}] if attributes else []),
                images=image or [],
                k=k,
                customer_id=customer_id,
                profile=profile,
                filters=json_field(filters, "filters"),
                diversity=diversity,
                tags=tags,
            )
        return await run_in_threadpool(_recommend_history, request, svc, ask)

    @routes.post("/api/recommend/top10_to_new")
    def top10_to_new(
        request: Request,
        svc: ServiceDep,
        product_ids: Annotated[str | None, Form(description="best sellers, comma-separated ids")] = None,
        images: Annotated[list[UploadFile] | None, File(description="best sellers' photos")] = None,
        sales: Annotated[str | None, Form(description='units sold, JSON {"id": units, ...}')] = None,
        sales_csv: Annotated[UploadFile | None, File(description="CSV with columns id,units")] = None,
        fraction: Annotated[
            float,
            Form(gt=0, le=1, description="best-seller share of the sales figures or of the established catalogue"),
        ] = 0.1,
        limit: Annotated[int, Form(ge=1, le=200, description="most best sellers listed")] = 20,
        k: K = 10,
        merged_k: Annotated[int, Form(ge=1, le=500)] = 50,
        filters: Filters = None,
        diversity: Diversity = 0.0,
    ) -> dict:
        """Best sellers → their most similar new products, a merged ranking and trend figures. The best sellers are
        the given ones (images, product ids, sales figures); else the units of the logged purchase events over the
        best-seller window; else, with no purchase in it, the centrality proxy. `source` says which."""
        given = [x for x in (product_ids, images, sales, sales_csv) if x]
        if len(given) > 1:
            raise LookalikeError("give one of product_ids, images, sales or sales_csv (none = centrality proxy)")
        svc.rec.require_products()
        sellers: list[dict]
        statistics = None
        if images:
            sellers = [{"id": None, "image": f.filename, "source": "image"} for f in images]
            vecs = np.stack([svc.image_vector(f, "image") for f in images])
            basis = "uploaded images"
        else:
            figures = _sales_figures(svc, sales, sales_csv)
            if figures is not None:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in figures.values()):
                    raise LookalikeError("sales must map product ids to numbers of units sold")
                picked = svc.rec.best_by_sales({str(i): float(v) for i, v in figures.items()}, fraction)[:limit]
                sellers = [{"id": i, "units": u, "source": "sales"} for i, u in picked]
                basis = f"top {fraction:.0%} of {len(figures)} products by units sold"
            elif product_ids:
                ids = [i.strip() for i in product_ids.split(",") if i.strip()]
                if len(ids) > 200:
                    raise LookalikeError(f"at most 200 product_ids, got {len(ids)}")
                sellers = [{"id": i, "source": "given"} for i in dict.fromkeys(ids)]
                basis = "given product ids"
            else:
                window = svc.settings.best_seller_window_days
                bought, n_sold = svc.rec.best_by_purchases(svc.events, window, fraction, limit)
                if bought:
                    sellers = [{"id": i, "units": u, "source": "purchases"} for i, u in bought]
                    n_top = max(1, round(n_sold * fraction))
                    basis = (
                        f"purchase events: the top {fraction:.0%} ({n_top}) of the {n_sold} products sold over the "
                        f"last {window} days by units, established ones, first {len(bought)} listed"
                    )
                else:
                    stats = svc.stats.get()  # the latest background statistics; 503 before the first
                    statistics = stats.describe()
                    picked, n_anchor = svc.rec.best_by_centrality(fraction, limit, stats)
                    sellers = [{"id": i, "centrality": round(c, 5), "source": "centrality"} for i, c in picked]
                    basis = (
                        f"centrality proxy (no sales given, no purchase events in the last {window} days): the "
                        f"{n_anchor} most central established products (top {fraction:.0%}), first {len(picked)} "
                        "listed"
                    )
            items = svc.store.get_many([s["id"] for s in sellers])
            missing = [s["id"] for s, it in zip(sellers, items) if it is None]
            if missing:
                raise HTTPException(404, f"unknown product id(s): {missing[:10]}")
            vecs = np.stack([it.vector for it in items if it is not None])  # none missing (checked above)
        res = svc.rec.top10_to_new(sellers, vecs, k, merged_k, diversity, json_field(filters, "filters"))
        lists = res["best_sellers"]
        svc.metrics.observe_results("top10_to_new", lists, recommended_new=True)
        if lists:
            svc.remember(f"top10_to_new: best seller {lists[0].get('id') or lists[0].get('image')}", lists[0])
        rid = svc.served(request, "top10_to_new", [m["id"] for m in res["merged"]])
        return {
            "request_id": rid,
            "source": sellers[0]["source"] if sellers else None,
            "basis": basis,
            "best_sellers": [
                {**{k2: v for k2, v in s.items() if k2 not in ("items", "intra_list_diversity")}, **svc.render_list(s)}
                for s in lists
            ],
            "merged": [
                {
                    **svc.render(m["id"], m["metadata"], m["score"]),
                    "n_sellers": m["n_sellers"],
                    "best_rank": m["best_rank"],
                }
                for m in res["merged"]
            ],
            "trend": res["trend"],
            **({"statistics": statistics} if statistics else {}),
        }

    return routes
