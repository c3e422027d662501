"""Monitoring: /api/kpi, Prometheus /metrics, /api/dashboard (what the dashboard shows), and the dashboard itself.

The dashboard page and its script are public (`page_router`); the figures follow the read guard. Nothing
here reads the whole catalogue: the counts are the store's (O(1)), the whole-catalogue statistics the
latest the background thread computed (`statistics` says which store version they describe; before the
first computation they are `null` and `pending` is true).
"""

import functools
import json
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from lookalike.errors import LookalikeError
from lookalike.recommend.catalogue import RESERVED
from lookalike.service.deps import ServiceDep
from lookalike.service.state import Service

router = APIRouter(tags=["monitoring"])
page_router = APIRouter()


def kpi(svc: Service) -> dict:
    """The KPI figures (and the Prometheus gauges they refresh)."""
    counts = catalogue_gauges(svc)
    stats = svc.stats.latest
    norms = np.asarray(svc.enc.last_norms)
    req = svc.metrics.summary()
    return {
        "requests": req["endpoints"],
        "mean_top1_similarity": req["mean_top1_similarity"],
        "mean_intra_list_diversity": req["mean_intra_list_diversity"],
        "catalogue": counts,
        # against the new products of the statistics' version (a product made new since counts from the next one)
        "catalogue_coverage": round(stats.count_new(svc.metrics.served_ids()) / len(stats.new_ids), 4)
        if stats and len(stats.new_ids)
        else None,
        "lists_served": req["lists_served"],
        # customers' events (the event log's counters, kept in each event batch's own transaction)
        "online": {**svc.events.kpi(counts["new"]), "best_seller_proxy": best_seller_proxy(svc)},
        "statistics": {
            "pending": stats is None,
            "current_version": counts["version"],
            **(stats.describe() if stats else {"store_version": None, "computed_at": None, "compute_s": None}),
        },
        "embedding_health": {
            "catalogue": stats.health if stats else None,
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


def best_seller_proxy(svc: Service) -> dict | None:
    """The latest check of the centrality proxy against the purchase events' units (computed by the background
    statistics thread, served from memory); None before any purchase."""
    p = svc.stats.proxy
    return p.describe() if p is not None else None


@router.get("/api/kpi")
def get_kpi(svc: ServiceDep) -> dict:
    """Requests and latency per endpoint, similarity, diversity, coverage, embedding health, catalogue size."""
    return kpi(svc)


def catalogue_gauges(svc: Service) -> dict:
    """The catalogue counts (the store's own, O(1)), set into the Prometheus gauges too."""
    counts = svc.rec.catalogue_counts()
    set_gauges(svc, counts)
    return counts


def set_gauges(svc: Service, counts: dict) -> None:
    for kind in ("size", "new", "established"):
        svc.metrics.catalogue.labels(kind).set(counts[kind])


@router.get("/metrics", response_class=Response)
def metrics(svc: ServiceDep) -> Response:
    c = svc.store.counts()  # the gauges need no per-category breakdown
    set_gauges(svc, {"size": c.size, "new": c.flagged, "established": c.size - c.flagged})
    svc.metrics.set_online(svc.events.counters())
    svc.metrics.set_proxy(svc.stats.proxy)
    return Response(svc.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/dashboard")
def dashboard_data(svc: ServiceDep) -> dict:
    """Everything the dashboard shows: {kpi, loss_curve, top_k_images, hyperparams, augmented_samples, tuning}
    (tuning: the study behind the served model when it came from `lookalike tune`, else null)."""
    results = _training_results(svc)
    if not svc.recent and len(svc.store):
        try:  # a first grid: the new products most like the most central established product (once computed)
            pid = svc.rec.best_by_centrality(0.1, 1)[0][0][0]
            central = svc.store.get(pid)
            if central is not None:  # None only if deleted since the statistics were computed
                svc.remember(
                    f"customer_input: product {pid} (most central established product)",
                    svc.rec.customer_input(central.vector, 10, exclude_ids=[pid]),
                )
        except LookalikeError:
            pass
    return {
        "kpi": kpi(svc),
        "loss_curve": results.get("history", []),
        "top_k_images": list(svc.recent),
        "hyperparams": hyperparams(svc, results),
        "augmented_samples": augmented_samples(svc),
        "tuning": svc.tuning,
    }


@page_router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    return HTMLResponse(resources.files("lookalike.service").joinpath("static/dashboard.html").read_text("utf-8"))


@page_router.get("/static/dashboard.js", include_in_schema=False)
def dashboard_js() -> Response:
    return Response(
        resources.files("lookalike.service").joinpath("static/dashboard.js").read_text("utf-8"),
        media_type="text/javascript",
    )


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
    f = svc.run_dir / "results" / "evaluation.json"
    try:
        st = f.stat()
    except OSError:
        return out
    return {**out, **_test_figures(str(f), st.st_mtime_ns, st.st_size)}


@functools.lru_cache(maxsize=8)
def _test_figures(path: str, mtime_ns: int, size: int) -> dict:
    """The test figures of an evaluation.json, parsed once per version of the file (not on every KPI request)."""
    try:
        ev = json.loads(Path(path).read_text(encoding="utf-8"))
        a = ev["json_to_image"]["attribute"]["all"]
        sim = ev["json_to_image"].get("similarity", {})
        return {
            "test_json_to_image": {m: round(a[m], 4) for m in ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10") if m in a},
            "similarity": {k: round(sim[k], 4) for k in ("positive_mean", "negative_mean", "gap") if k in sim},
        }
    except (OSError, KeyError, json.JSONDecodeError):
        return {}


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


def augmented_samples(svc: Service, n: int = 4, max_views: int = 3) -> list[dict]:
    """The towers' training augmentation, shown on stored products: field dropout on attribute queries (each
    field dropped with probability tower.field_dropout, at least one kept) and, when the model trained with
    `augment.image_views`, the image views whose cached vectors it trained on (`/api/items/ID/views/V`)."""
    p = svc.enc.cfg.tower.field_dropout
    views = min(svc.enc.cfg.augment.image_views, max_views)
    fields = set(svc.enc.model.vocab.fields)
    rng = np.random.default_rng(0)
    out = []
    for it in svc.store.get_many(svc.store.ids(limit=n)):
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
                "image_views": svc.enc.cfg.augment.image_views,
                "view_urls": [f"/api/items/{it.id}/views/{v}" for v in range(views)],
            }
        )
    return out
