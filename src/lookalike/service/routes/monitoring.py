"""Monitoring: /api/kpi, Prometheus /metrics, /api/dashboard (what the dashboard shows), and the dashboard itself.

The dashboard page and its script are public (`page_router`); the figures follow the read guard.
"""

import json
from importlib import resources

import numpy as np
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from lookalike.errors import LookalikeError
from lookalike.evaluation.diversity import catalogue_coverage
from lookalike.evaluation.evaluator import embedding_health
from lookalike.recommend.catalogue import RESERVED
from lookalike.service.deps import ServiceDep
from lookalike.service.state import Service

router = APIRouter(tags=["monitoring"])
page_router = APIRouter()


def kpi(svc: Service) -> dict:
    """The KPI figures (and the Prometheus gauges they refresh)."""
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


@router.get("/api/kpi")
def get_kpi(svc: ServiceDep) -> dict:
    """Requests and latency per endpoint, similarity, diversity, coverage, embedding health, catalogue size."""
    return kpi(svc)


@router.get("/metrics", response_class=Response)
def metrics(svc: ServiceDep) -> Response:
    kpi(svc)  # refresh the gauges
    return Response(svc.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/api/dashboard")
def dashboard_data(svc: ServiceDep) -> dict:
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
        "kpi": kpi(svc),
        "loss_curve": results.get("history", []),
        "top_k_images": list(svc.recent),
        "hyperparams": hyperparams(svc, results),
        "augmented_samples": augmented_samples(svc),
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
