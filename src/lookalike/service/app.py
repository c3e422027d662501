"""The FastAPI app: recommenders, search, catalogue management, KPIs, Prometheus metrics and the dashboard.

Every endpoint takes multipart form fields (files and JSON-in-a-field alike), so one curl style works
everywhere and the browser posts FormData. User mistakes answer 4xx with a message naming the field
and value; a failed write changes nothing. An added image is in place under its final name before the
store commit that refers to it, and an old one is removed only after (see uploads.py), so no product is
ever served without its image. With an auth file, writes need a bearer token (auth.py); a rate limit
answers 429 per client (ratelimit.py).
"""

import csv
import io
import json
import os
import threading
import time
from collections import deque
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from lookalike.errors import LookalikeError
from lookalike.evaluation.diversity import catalogue_coverage
from lookalike.evaluation.evaluator import embedding_health
from lookalike.inference import QueryEncoder, decode_image
from lookalike.recommend.catalogue import RESERVED, check_id, product_from_json, product_metadata
from lookalike.recommend.newness import NewRule
from lookalike.recommend.recommender import Recommender
from lookalike.retrieval.stores import StoreItem, open_store
from lookalike.service.auth import TokenFile, bearer, require
from lookalike.service.metrics import Metrics
from lookalike.service.ratelimit import Rate, RateLimit
from lookalike.service.uploads import UploadDir


class ServiceSettings(BaseModel):
    """Everything `lookalike serve` can set; one validated object, as for training runs."""

    checkpoint: str
    store: str
    catalog: str | None = Field(
        None, description="catalogue directory: its images are served (default: the checkpoint's training catalogue)"
    )
    upload_dir: str = Field("runs/service/uploads", description="where images of products added over the API go")
    new_rule: str = "year>=2016"
    max_upload_mb: float = Field(5.0, gt=0)
    max_k: int = Field(100, ge=1, le=1000)
    cache_dir: str | None = None
    colour_field: str | None = Field(None, description="attribute for the colour mix (default: baseColour if present)")
    auth_file: str | None = Field(None, description="token file from `lookalike auth add`: writes need a write token")
    auth_reads: bool = Field(False, description="reads need a read token too (requires auth_file)")
    rate_limit: str | None = Field(None, description="per-client request rate, e.g. 600/minute (None: unlimited)")
    search: Literal["exact", "approximate"] = Field(
        "exact",
        description="exact: every stored vector is scored (the ground truth; fine to ~100k products); "
        "approximate: the store's HNSW index (for a million products; see benchmarks/scale.py)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ServiceSettings":
        if self.auth_reads and not self.auth_file:
            raise ValueError("auth_reads needs an auth_file")
        if self.rate_limit:
            Rate.parse(self.rate_limit)
        return self


class Service:
    """State shared by the endpoints: one store, one model, the recommenders and the metrics."""

    def __init__(self, s: ServiceSettings):
        self.settings = s
        self.rule = NewRule.parse(s.new_rule)
        self.enc = QueryEncoder.load(s.checkpoint, s.cache_dir)
        self.store = open_store(s.store, self.enc.dim)
        schema = self.enc.schema
        fields = schema.fields if schema else self.enc.model.vocab.fields
        colour = s.colour_field or ("baseColour" if "baseColour" in fields else None)
        self.rec = Recommender(self.store, schema.category_field if schema else None, colour, exact=s.search == "exact")
        self.rec.gallery(self.enc.hub_bias)  # starts computing the offsets' bound that certifies /api/search lists
        self.uploads = UploadDir(s.upload_dir)
        self.upload_dir = self.uploads.path
        self.swept = self.uploads.sweep(self.store)  # leftovers of a crashed writer, counted in the log
        self.tokens = TokenFile(s.auth_file) if s.auth_file else None
        catalog = s.catalog or self.enc.cfg.data.catalog
        self.image_roots = [self.upload_dir] + ([Path(os.path.abspath(catalog))] if Path(catalog).is_dir() else [])
        self.run_dir = Path(s.checkpoint).resolve().parent.parent
        self.metrics = Metrics()
        self.recent: deque = deque(maxlen=6)  # recent result lists for the dashboard's image grids
        self.write_lock = threading.Lock()
        self.health: tuple = (None, {})  # (snapshot, its embedding health)
        self.max_bytes = int(s.max_upload_mb * 1024 * 1024)

    # --- helpers -----------------------------------------------------------------------------------
    def read_upload(self, f: UploadFile, what: str) -> bytes:
        data = f.file.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise HTTPException(
                413, f"{what} {f.filename!r} is larger than the {self.settings.max_upload_mb:g} MB limit"
            )
        return data

    def image_vector(self, f: UploadFile, what: str = "image") -> np.ndarray:
        return self.enc.images([decode_image(self.read_upload(f, what), f"{what} {f.filename!r}")])[0]

    def item(self, pid: str) -> StoreItem:
        it = self.store.get(pid)
        if it is None:
            raise HTTPException(404, f"unknown product id {pid!r}")
        return it

    def render(self, pid: str, md: dict, score: float | None = None) -> dict:
        out = {
            "id": pid,
            "image_url": f"/api/items/{pid}/image",
            "attributes": {k: v for k, v in md.items() if k != "image"},
        }
        if score is not None:
            out["score"] = round(float(score), 5)
        return out

    def render_list(self, res: dict) -> dict:
        return {
            "items": [self.render(i, md, s) for i, s, md in res["items"]],
            "intra_list_diversity": res["intra_list_diversity"],
        }

    def remember(self, label: str, res: dict) -> None:
        self.recent.appendleft({"query": label, "items": self.render_list(res)["items"][:10]})


class RequestGuard:
    """Counts and times every request by route template, and refuses a body announced larger than the
    upload limit before anything is read (plain ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = 500
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            status = 413
            detail = f"request body of {int(length)} bytes exceeds the {self.max_body} byte limit"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            self.metrics.observe_request("oversized", scope["method"], status, time.perf_counter() - t)
            return

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - t)


def _json_field(raw: str | None, name: str, kind: type = dict):
    if raw is None or raw == "":
        return None
    try:
        v = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LookalikeError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(v, kind):
        raise LookalikeError(f"{name} must be a JSON {'object' if kind is dict else kind.__name__}, got {raw[:80]!r}")
    return v


def _sales_csv(data: bytes, name: str) -> dict[str, float]:
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except UnicodeDecodeError:
        raise LookalikeError(f"sales file {name!r} is not UTF-8 text") from None
    cols = set(rows[0]) if rows else set()
    units = "units" if "units" in cols else "sales" if "sales" in cols else None
    if "id" not in cols or units is None:
        raise LookalikeError(f"sales file {name!r} needs columns id and units (or sales); found {sorted(cols)}")
    out = {}
    for n, r in enumerate(rows, 2):
        try:
            out[r["id"].strip()] = float(r[units])
        except (TypeError, ValueError):
            raise LookalikeError(f"sales file {name!r} line {n}: {units} value {r[units]!r} is not a number") from None
    return out


def create_app(settings: ServiceSettings) -> FastAPI:
    svc = Service(settings)
    max_k = settings.max_k
    K = Annotated[int, Form(ge=1, le=max_k, description=f"results per list (1..{max_k})")]
    Diversity = Annotated[float, Form(ge=0, le=1, description="MMR diversity weight (1 − λ); 0 = plain top-K")]
    Filters = Annotated[
        str | None,
        Form(
            description="JSON object of metadata equality / IN filters, e.g. "
            '{"masterCategory": "Apparel", "baseColour": ["Red", "Blue"]}'
        ),
    ]
    app = FastAPI(title="lookalike", version="1", description="Look-alike product recommendations on a learned space.")
    app.state.service = svc
    # Security dependencies: they check the bearer token and put the scheme into the OpenAPI schema.
    writes = [Depends(require(svc.tokens, "write"))] if svc.tokens else []
    reads = [Depends(require(svc.tokens, "read"))] if svc.tokens and settings.auth_reads else []

    @app.exception_handler(LookalikeError)
    async def user_error(request: Request, exc: LookalikeError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    if settings.rate_limit:  # inside RequestGuard, so refused requests are counted too
        app.add_middleware(RateLimit, rate=Rate.parse(settings.rate_limit))
    # images, plus room for the other form fields and several images in one top10_to_new request
    app.add_middleware(RequestGuard, metrics=svc.metrics, max_body=8 * svc.max_bytes + 1024 * 1024)

    # --- recommenders ------------------------------------------------------------------------------
    @app.post("/api/recommend/customer_input", tags=["recommend"], dependencies=reads)
    def customer_input(
        image: Annotated[UploadFile | None, File(description="a customer's photo")] = None,
        product_id: Annotated[str | None, Form(description="a clicked product")] = None,
        k: K = 10,
        filters: Filters = None,
        diversity: Diversity = 0.0,
    ) -> dict:
        """The top-K most similar *new* products to an uploaded photo or a clicked product."""
        if (image is None) == (not product_id):
            raise LookalikeError("give exactly one of image (file upload) or product_id")
        q = svc.image_vector(image) if image is not None else svc.item(product_id).vector
        res = svc.rec.customer_input(
            q, k, _json_field(filters, "filters"), diversity, exclude_ids=[product_id] if product_id else None
        )
        svc.metrics.observe_results("customer_input", [res], recommended_new=True)
        svc.remember(f"customer_input: {'photo ' + str(image.filename) if image else 'product ' + product_id}", res)
        return {
            "query": {"product_id": product_id} if product_id else {"image": image.filename},
            **svc.render_list(res),
        }

    @app.post("/api/recommend/top10_to_new", tags=["recommend"], dependencies=reads)
    def top10_to_new(
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
        """Best sellers → their most similar new products, a merged ranking and trend figures."""
        given = [x for x in (product_ids, images, sales, sales_csv) if x]
        if len(given) > 1:
            raise LookalikeError("give one of product_ids, images, sales or sales_csv (none = centrality proxy)")
        sellers: list[dict]
        if images:
            sellers = [{"id": None, "image": f.filename, "source": "image"} for f in images]
            vecs = np.stack([svc.image_vector(f, "image") for f in images])
            basis = "uploaded images"
        else:
            if sales or sales_csv:
                figures = (
                    _json_field(sales, "sales")
                    if sales
                    else _sales_csv(svc.read_upload(sales_csv, "sales_csv"), sales_csv.filename)
                )
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
                picked, n_anchor = svc.rec.best_by_centrality(fraction, limit)
                sellers = [{"id": i, "centrality": round(c, 5), "source": "centrality"} for i, c in picked]
                basis = (
                    f"centrality proxy (no sales given): the {n_anchor} most central established products "
                    f"(top {fraction:.0%}), first {len(picked)} listed"
                )
            items = svc.store.get_many([s["id"] for s in sellers])
            missing = [s["id"] for s, it in zip(sellers, items) if it is None]
            if missing:
                raise HTTPException(404, f"unknown product id(s): {missing[:10]}")
            vecs = np.stack([it.vector for it in items])
        res = svc.rec.top10_to_new(sellers, vecs, k, merged_k, diversity, _json_field(filters, "filters"))
        lists = res["best_sellers"]
        svc.metrics.observe_results("top10_to_new", lists, recommended_new=True)
        if lists:
            svc.remember(f"top10_to_new: best seller {lists[0].get('id') or lists[0].get('image')}", lists[0])
        return {
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
        }

    @app.post("/api/search", tags=["search"], dependencies=reads)
    def search(
        attributes: Annotated[str | None, Form(description='attribute JSON, e.g. {"baseColour": "Red"}')] = None,
        text: Annotated[str | None, Form(description="free-text query")] = None,
        image: Annotated[UploadFile | None, File(description="query image")] = None,
        k: K = 10,
        filters: Filters = None,
        diversity: Diversity = 0.0,
    ) -> dict:
        """Attribute JSON, text or image → top-K over the whole catalogue (filters may narrow it)."""
        given = [n for n, v in (("attributes", attributes), ("text", text), ("image", image)) if v]
        if len(given) != 1:
            raise LookalikeError(f"give exactly one of attributes, text or image; got {given or 'none'}")
        unknown, ignored = {}, []
        if attributes:
            q, unknown, ignored = svc.enc.attributes(_json_field(attributes, "attributes"))
        elif text:
            q = svc.enc.text(text)
        else:
            q = svc.image_vector(image)
        bias = None if image else svc.enc.hub_bias  # JSON and text rank as in evaluation; images by plain cosine
        res = svc.rec.rank(q[None, :], k, _json_field(filters, "filters"), diversity, bias=bias)[0]
        svc.metrics.observe_results("search", [res], recommended_new=False)
        svc.remember(f"search: {attributes or text or 'image ' + str(image.filename)}", res)
        return {
            "query": given[0],
            "unknown_values": unknown,
            "ignored_fields": ignored,
            **svc.render_list(res),
            "ranking": {"certified": res["certified"], "depth": res["depth"]},
        }

    # --- catalogue ---------------------------------------------------------------------------------
    @app.get("/api/items", tags=["catalogue"], dependencies=reads)
    def list_items(offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        ids = svc.store.ids()
        page = ids[offset : offset + limit]
        items = svc.store.get_many(page)
        return {
            "total": len(ids),
            "offset": offset,
            "items": [svc.render(it.id, it.metadata) for it in items if it is not None],
        }

    @app.get("/api/items/{product_id}", tags=["catalogue"], dependencies=reads)
    def get_item(product_id: str) -> dict:
        it = svc.item(product_id)
        return svc.render(it.id, it.metadata)

    @app.get(
        "/api/items/{product_id}/image",
        tags=["catalogue"],
        dependencies=reads,
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}},
    )
    def item_image(product_id: str):
        # Lexical check (no symlink resolution): a catalogue's image folder may itself be a link.
        path = Path(os.path.abspath(str(svc.item(product_id).metadata.get("image", ""))))
        if not any(path.is_relative_to(r) for r in svc.image_roots):
            raise HTTPException(403, f"image of {product_id!r} lies outside the served image roots")
        if not path.is_file():
            raise HTTPException(404, f"image of {product_id!r} is missing on disk")
        return FileResponse(path)

    def write_product(pid: str, attributes: str, image: UploadFile | None, text: str | None, adding: bool) -> dict:
        """Validate and embed outside the lock; place the image, commit, then drop the replaced image."""
        attrs = _json_field(attributes, "attributes")
        if attrs is None:
            raise LookalikeError("attributes (a JSON object) is required")
        staged = None
        if image is not None:
            data = svc.read_upload(image, "image")
            im = decode_image(data, f"image {image.filename!r}")
            ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}.get(
                Image.open(io.BytesIO(data)).format, ".img"
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
                md = product_metadata(product_from_json(pid, attrs, Path(old), text, svc.enc.schema), svc.rule)
                svc.store.upsert([StoreItem(pid, current.vector, md)])
            else:
                final, data, vector = staged
                with svc.uploads.staged(final, data, keep=old):
                    svc.store.upsert([StoreItem(pid, vector, md)])
        if staged is not None and old and os.path.abspath(old) != str(staged[0]):
            svc.uploads.remove(old)  # the replaced image, only once the new row is committed
        return svc.render(pid, md)

    @app.post("/api/items", tags=["catalogue"], dependencies=writes, status_code=201)
    def add_item(
        product_id: Annotated[str, Form(description="new product id")],
        attributes: Annotated[str, Form(description="attribute JSON (catalogue fields, plus e.g. year)")],
        image: Annotated[UploadFile, File(description="product image")],
        text: Annotated[str | None, Form(description="product name / description")] = None,
    ) -> dict:
        """Add a product: its image is embedded with the frozen encoder; vector + metadata in one transaction."""
        return write_product(check_id(product_id), attributes, image, text, adding=True)

    @app.put("/api/items/{product_id}", tags=["catalogue"], dependencies=writes)
    def update_item(
        product_id: str,
        attributes: Annotated[str, Form(description="attribute JSON (replaces all)")],
        image: Annotated[UploadFile | None, File(description="new image (optional)")] = None,
        text: Annotated[str | None, Form()] = None,
    ) -> dict:
        """Replace a product's attributes (and image, if given). Idempotent."""
        return write_product(product_id, attributes, image, text, adding=False)

    @app.delete("/api/items/{product_id}", tags=["catalogue"], dependencies=writes)
    def delete_item(product_id: str) -> dict:
        """Remove a product; it is gone from search at once."""
        with svc.write_lock:
            image = str(svc.item(product_id).metadata.get("image", ""))
            if not svc.store.delete([product_id]):
                raise HTTPException(404, f"unknown product id {product_id!r}")
        svc.uploads.remove(image)  # only an image the API stored; catalogue images are never touched
        return {"deleted": product_id}

    # --- auth --------------------------------------------------------------------------------------
    @app.get("/api/auth", tags=["auth"])
    def auth_info(cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> dict:
        """What this server asks for, and which token (id and scope, never the token) a request carries."""
        token = None
        if svc.tokens and cred is not None:
            rec = svc.tokens.match(cred.credentials)
            if rec is None:
                raise HTTPException(
                    401,
                    "the bearer token is not valid (unknown or revoked)",
                    headers={"WWW-Authenticate": 'Bearer realm="lookalike", error="invalid_token"'},
                )
            token = {"id": rec.id, "scope": rec.scope, "name": rec.name}
        return {
            "writes_need_token": svc.tokens is not None,
            "reads_need_token": bool(reads),
            "token": token,
            "rate_limit": settings.rate_limit,
        }

    if svc.tokens:

        @app.get("/api/auth/tokens", tags=["auth"], dependencies=[Depends(require(svc.tokens, "admin"))])
        def auth_tokens() -> dict:
            """The accepted tokens' ids, scopes, names and creation times (admin scope; hashes never shown)."""
            return {
                "tokens": [
                    {"id": r.id, "scope": r.scope, "name": r.name, "created": r.created} for r in svc.tokens.records
                ]
            }

    # --- monitoring --------------------------------------------------------------------------------
    def kpi() -> dict:
        counts = svc.rec.catalogue_counts()
        snap = svc.rec.snapshot()
        if svc.health[0] is not snap:  # 40k × 512 statistics: once per catalogue version
            svc.health = (snap, embedding_health(snap.vectors) if len(snap.ids) > 1 else {})
        new_ids = {i for i, n in zip(snap.ids, snap.new_mask) if n}
        served = [[i for i in lst if i in new_ids] for lst in list(svc.metrics.lists)]  # deleted since: not coverage
        norms = np.asarray(svc.enc.last_norms)
        req = svc.metrics.summary()
        for kind in ("size", "new", "established"):
            svc.metrics.catalogue.labels(kind).set(counts[kind])
        return {
            "requests": req["endpoints"],
            "mean_top1_similarity": req["mean_top1_similarity"],
            "mean_intra_list_diversity": req["mean_intra_list_diversity"],
            "catalogue": counts,
            "catalogue_coverage": round(catalogue_coverage(served, new_ids), 4) if new_ids else None,
            "lists_served": req["lists_served"],
            "embedding_health": {
                "catalogue": svc.health[1],
                "query_norms": {
                    "n": len(norms),
                    "mean": round(float(norms.mean()), 4),
                    "min": round(float(norms.min()), 4),
                    "max": round(float(norms.max()), 4),
                }
                if len(norms)
                else None,
            },
            "training": training_summary(svc),
        }

    @app.get("/api/kpi", tags=["monitoring"], dependencies=reads)
    def get_kpi() -> dict:
        """Requests and latency per endpoint, similarity, diversity, coverage, embedding health, catalogue size."""
        return kpi()

    @app.get("/metrics", tags=["monitoring"], dependencies=reads, response_class=Response)
    def metrics() -> Response:
        kpi()  # refresh the gauges
        return Response(svc.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/dashboard", tags=["monitoring"], dependencies=reads)
    def dashboard_data() -> dict:
        """Everything the dashboard shows: {kpi, loss_curve, top_k_images, hyperparams, augmented_samples}."""
        results = _training_results(svc)
        if not svc.recent and len(svc.store):
            try:  # a first grid: the new products most like the most central established product
                pid = svc.rec.best_by_centrality(0.1, 1)[0][0][0]
                svc.remember(
                    f"customer_input: product {pid} (most central established product)",
                    svc.rec.customer_input(svc.store.get(pid).vector, 10, exclude_ids=[pid]),
                )
            except LookalikeError:
                pass
        return {
            "kpi": kpi(),
            "loss_curve": results.get("history", []),
            "top_k_images": list(svc.recent),
            "hyperparams": hyperparams(svc, results),
            "augmented_samples": augmented_samples(svc),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(resources.files("lookalike.service").joinpath("static/dashboard.html").read_text("utf-8"))

    @app.get("/static/dashboard.js", include_in_schema=False)
    def dashboard_js() -> Response:
        return Response(
            resources.files("lookalike.service").joinpath("static/dashboard.js").read_text("utf-8"),
            media_type="text/javascript",
        )

    return app


def _training_results(svc: Service) -> dict:
    f = svc.run_dir / "results" / "training_results.json"
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def training_summary(svc: Service) -> dict:
    """Best epoch, validation metric and test figures of the served checkpoint's run, where recorded."""
    p = svc.enc.payload
    out = {
        "checkpoint": svc.settings.checkpoint,
        "best_epoch": p.get("epoch"),
        "val_metric": p.get("val_metric"),
        "val_metric_name": svc.enc.cfg.train.val_metric,
    }
    try:
        ev = json.loads((svc.run_dir / "results" / "evaluation.json").read_text(encoding="utf-8"))
        a = ev["json_to_image"]["attribute"]["all"]
        sim = ev["json_to_image"].get("similarity", {})
        out["test_json_to_image"] = {
            m: round(a[m], 4) for m in ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10") if m in a
        }
        out["similarity"] = {k: round(sim[k], 4) for k in ("positive_mean", "negative_mean", "gap") if k in sim}
    except (OSError, KeyError, json.JSONDecodeError):
        pass
    return out


def hyperparams(svc: Service, results: dict) -> dict:
    c = svc.enc.cfg
    return {
        "train": c.train.model_dump(),
        "tower": c.tower.model_dump(),
        "encoder": c.encoder.model_dump(exclude={"cache_dir"}),
        "new_rule": str(svc.rule),
        "best_epoch": results.get("best_epoch", svc.enc.payload.get("epoch")),
        "seed": results.get("seed", c.train.seed),
    }


def augmented_samples(svc: Service, n: int = 4) -> list[dict]:
    """The towers' training augmentation, shown on stored products: the image side is frozen and
    cached, so the augmentation is field dropout on attribute queries (each field dropped with
    probability tower.field_dropout, at least one kept)."""
    p = svc.enc.cfg.tower.field_dropout
    fields = set(svc.enc.model.vocab.fields)
    rng = np.random.default_rng(0)
    out = []
    for it in svc.store.get_many(svc.store.ids()[:n]):
        if it is None:
            continue
        attrs = {k: v for k, v in it.metadata.items() if k in fields and k not in RESERVED}
        keep = {k: v for k, v in attrs.items() if rng.random() >= p} or dict(list(attrs.items())[:1])
        out.append(
            {
                "id": it.id,
                "image_url": f"/api/items/{it.id}/image",
                "original": attrs,
                "augmented": keep,
                "dropped": sorted(set(attrs) - set(keep)),
                "field_dropout": p,
            }
        )
    return out
