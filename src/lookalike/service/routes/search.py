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
        tags: Annotated[bool, Form(description="with an image: also return the photo's predicted attributes")] = False,
    ) -> dict:
        """Attribute JSON, text or image → top-K over the whole catalogue (filters may narrow it). An image with
        attributes searches by the photo's predicted attributes with those given put in their place ("this
        photo's attributes, with colour changed to red": image + attributes={"baseColour": "Red"})."""
        given = [n for n, v in (("attributes", attributes), ("text", text), ("image", image)) if v]
        if len(given) != 1 and set(given) != {"attributes", "image"}:
            raise LookalikeError(
                f"give exactly one of attributes, text or image (or an image with attributes); got {given or 'none'}"
            )
        unknown: dict[str, list[str]] = {}
        ignored: list[str] = []
        photo_tags = None
        if image is not None:
            im = svc.decode_upload(image)
            photo = svc.enc.images([im])[0]
            if attributes or (tags and svc.has_tagger):  # tags of a checkpoint without a tagger: null
                photo_tags = svc.image_tagger().tag([im], vectors=photo[None, :])[0]
        if attributes:
            query = json_field(attributes, "attributes")
            if photo_tags is not None:
                query = {**{f: t["value"] for f, t in photo_tags.items()}, **query}
            q, unknown, ignored = svc.enc.attributes(query)
        elif text:
            q = svc.enc.text(text)
        else:
            assert image is not None  # exactly one was given
            q = photo
        by_image = image is not None and not attributes
        bias = None if by_image else svc.enc.hub_bias  # JSON and text rank as in evaluation; images by plain cosine
        res = svc.rec.rank(
            q[None, :], k, json_field(filters, "filters"), diversity, bias=bias, rerank=svc.reranking(diversity)
        )[0]
        svc.metrics.observe_results("search", [res], recommended_new=False)
        svc.remember(f"search: {attributes or text or 'image ' + str(image.filename if image else '')}", res)
        return {
            "query": "image+attributes" if len(given) == 2 else given[0],
            **({"tags": photo_tags} if image is not None and (tags or attributes) else {}),
            "unknown_values": unknown,
            "ignored_fields": ignored,
            **svc.render_list(res),
            "ranking": svc.ranking_path(res),  # retrieval/ranking.py
        }

    return routes
