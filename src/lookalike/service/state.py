"""The service's state: its validated settings, and the one `Service` object the endpoints share.

`create_app` builds one `Service` per app and keeps it on `app.state.service`; the routers reach it
through a dependency (deps.py), never through a module global, so each worker process has its own.
"""

import os
import threading
from collections import deque
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import HTTPException, UploadFile
from pydantic import BaseModel, Field, field_validator, model_validator

from lookalike.config import check_device
from lookalike.inference import QueryEncoder, decode_image
from lookalike.recommend.catalogue import report_fields
from lookalike.recommend.newness import NewRule
from lookalike.recommend.recommender import Recommender
from lookalike.recommend.statistics import BackgroundStatistics
from lookalike.retrieval.stores import StoreItem, open_store
from lookalike.service.auth import TokenFile
from lookalike.service.metrics import Metrics
from lookalike.service.ratelimit import Rate
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
    device: str | None = Field(None, description="where the towers and image encoder run: auto, cpu, cuda[:N], mps")
    colour_field: str | None = Field(None, description="attribute for the colour mix (default: baseColour if present)")
    auth_file: str | None = Field(None, description="token file from `lookalike auth add`: writes need a write token")
    auth_reads: bool = Field(False, description="reads need a read token too (requires auth_file)")
    rate_limit: str | None = Field(None, description="per-client request rate, e.g. 600/minute (None: unlimited)")
    search: Literal["exact", "approximate"] = Field(
        "exact",
        description="exact: every stored vector is scored (the ground truth; fine to ~100k products); "
        "approximate: the store's HNSW index (for a million products; see benchmarks/scale.py)",
    )
    stats_interval: float = Field(
        1.0, gt=0, description="seconds between checks of the store version for the background catalogue statistics"
    )
    stats_subprocess_from: int = Field(
        10_000,
        ge=0,
        description="from this many products on, the catalogue statistics are computed in a child process "
        "(reading every row would pause this process's requests)",
    )
    category_field: str | None = Field(
        None, description="attribute counted per category and in the category mix (default: the model's)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v is None else check_device(v)

    @model_validator(mode="after")
    def _consistent(self) -> "ServiceSettings":
        if self.auth_reads and not self.auth_file:
            raise ValueError("auth_reads needs an auth_file")
        if self.rate_limit:
            Rate.parse(self.rate_limit)
        return self


class Service:
    """State shared by the endpoints: one store, one model, the recommenders, the metrics, and the thread
    that keeps the whole-catalogue statistics current (started here, stopped by `close`)."""

    def __init__(self, s: ServiceSettings):
        self.settings = s
        self.rule = NewRule.parse(s.new_rule)
        self.enc = QueryEncoder.load(s.checkpoint, s.cache_dir, s.device)
        self.store = open_store(s.store, self.enc.dim)
        category, colour = report_fields(self.enc, s.colour_field, s.category_field)
        self.stats = BackgroundStatistics(self.store, s.stats_interval, s.store, s.stats_subprocess_from)
        self.rec = Recommender(self.store, category, colour, exact=s.search == "exact", statistics=self.stats)
        self.rec.gallery(self.enc.hub_bias)  # starts computing the offsets' bound that certifies /api/search lists
        self.uploads = UploadDir(s.upload_dir)
        self.upload_dir = self.uploads.path
        self.swept = self.uploads.sweep(self.store)  # leftovers of a crashed writer, counted in the log
        self.tokens = TokenFile(s.auth_file) if s.auth_file else None
        catalog = s.catalog or self.enc.cfg.data.catalog
        # The catalogue folder as given and as resolved: the loader stores resolved paths, and the folder
        # itself may be a link (the check against these roots is lexical, so links inside stay allowed).
        roots = (
            []
            if not catalog or not Path(catalog).is_dir()
            else [Path(os.path.abspath(catalog)), Path(os.path.realpath(catalog))]
        )
        self.image_roots = [self.upload_dir, *dict.fromkeys(roots)]
        self.run_dir = Path(s.checkpoint).resolve().parent.parent
        self.metrics = Metrics()
        self.recent: deque = deque(maxlen=6)  # recent result lists for the dashboard's image grids
        self.write_lock = threading.Lock()
        self.max_bytes = int(s.max_upload_mb * 1024 * 1024)
        self.stats.start()

    def close(self) -> None:
        """Stop the statistics thread (at shutdown, before the store is released)."""
        self.stats.stop()

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
        out: dict[str, object] = {
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
