"""The recommenders: /api/recommend/customer_input and /api/recommend/top10_to_new."""

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from lookalike.errors import LookalikeError
from lookalike.service.deps import ServiceDep
from lookalike.service.forms import Diversity, Filters, json_field, k_form, parse_sales_csv
from lookalike.service.state import Service


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

    @routes.post("/api/recommend/customer_input")
    def customer_input(
        svc: ServiceDep,
        image: Annotated[UploadFile | None, File(description="a customer's photo")] = None,
        product_id: Annotated[str | None, Form(description="a clicked product")] = None,
        k: K = 10,
        filters: Filters = None,
        diversity: Diversity = 0.0,
        tags: Annotated[bool, Form(description="with an image: also return the photo's predicted attributes")] = False,
    ) -> dict:
        """The top-K most similar *new* products to an uploaded photo or a clicked product."""
        if (image is None) == (not product_id):
            raise LookalikeError("give exactly one of image (file upload) or product_id")
        svc.rec.require_products()
        query: dict[str, str | None]
        photo_tags = None
        if image is not None:
            im = svc.decode_upload(image)
            q = svc.enc.images([im])[0]
            if tags and svc.has_tagger:  # tags of a checkpoint without a tagger: null
                photo_tags = svc.image_tagger().tag([im], vectors=q[None, :])[0]
            query, what = {"image": image.filename}, f"photo {image.filename}"
        else:
            assert product_id  # exactly one of the two (checked above)
            q = svc.item(product_id).vector
            query, what = {"product_id": product_id}, f"product {product_id}"
        res = svc.rec.customer_input(
            q, k, json_field(filters, "filters"), diversity, exclude_ids=[product_id] if product_id else None
        )
        svc.metrics.observe_results("customer_input", [res], recommended_new=True)
        svc.remember(f"customer_input: {what}", res)
        return {"query": query, **({"tags": photo_tags} if tags and image is not None else {}), **svc.render_list(res)}

    @routes.post("/api/recommend/top10_to_new")
    def top10_to_new(
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
        """Best sellers → their most similar new products, a merged ranking and trend figures."""
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
                stats = svc.stats.get()  # the latest background statistics; 503 before the first
                statistics = stats.describe()
                picked, n_anchor = svc.rec.best_by_centrality(fraction, limit, stats)
                sellers = [{"id": i, "centrality": round(c, 5), "source": "centrality"} for i, c in picked]
                basis = (
                    f"centrality proxy (no sales given): the {n_anchor} most central established products "
                    f"(top {fraction:.0%}), first {len(picked)} listed"
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
            **({"statistics": statistics} if statistics else {}),
        }

    return routes
