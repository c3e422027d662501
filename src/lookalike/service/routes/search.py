"""Search over the whole catalogue: /api/search (attribute JSON, text or an image)."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from lookalike.errors import LookalikeError
from lookalike.service.deps import ServiceDep
from lookalike.service.forms import Diversity, Filters, json_field, k_form


def router(max_k: int) -> APIRouter:
    """The search route; `max_k` bounds its k field (validated, and shown in the OpenAPI schema)."""
    K = Annotated[int, k_form(max_k)]
    routes = APIRouter(tags=["search"])

    @routes.post("/api/search")
    def search(
        svc: ServiceDep,
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
        unknown: dict[str, list[str]] = {}
        ignored: list[str] = []
        if attributes:
            q, unknown, ignored = svc.enc.attributes(json_field(attributes, "attributes"))
        elif text:
            q = svc.enc.text(text)
        else:
            assert image is not None  # exactly one was given
            q = svc.image_vector(image)
        bias = None if image else svc.enc.hub_bias  # JSON and text rank as in evaluation; images by plain cosine
        res = svc.rec.rank(q[None, :], k, json_field(filters, "filters"), diversity, bias=bias)[0]
        svc.metrics.observe_results("search", [res], recommended_new=False)
        svc.remember(f"search: {attributes or text or 'image ' + str(image.filename if image else '')}", res)
        return {
            "query": given[0],
            "unknown_values": unknown,
            "ignored_fields": ignored,
            **svc.render_list(res),
            "ranking": {"certified": res["certified"], "depth": res["depth"]},  # retrieval/ranking.py
        }

    return routes
