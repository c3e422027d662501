"""The service's state: its validated settings, and the one `Service` object the endpoints share.

`create_app` builds one `Service` per app and keeps it on `app.state.service`; the routers reach it
through a dependency (deps.py), never through a module global, so each worker process has its own.
"""

import os
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from fastapi import HTTPException, Request, UploadFile
from PIL import Image
from pydantic import BaseModel, Field, field_validator, model_validator

from lookalike.config import check_device
from lookalike.errors import LookalikeError
from lookalike.inference import QueryEncoder, decode_image
from lookalike.recommend.catalogue import report_fields
from lookalike.recommend.events import BEST_SELLER_WINDOW_DAYS, open_events
from lookalike.recommend.experiments import Experiment
from lookalike.recommend.newness import NewRule
from lookalike.recommend.profile import EVENT_WEIGHTS, ProfileSettings
from lookalike.recommend.recommender import Recommender
from lookalike.recommend.statistics import BackgroundStatistics
from lookalike.retrieval.ranking import Rerank
from lookalike.retrieval.rerank.listwise import load_reranker
from lookalike.retrieval.stores import StoreItem, VectorStore, open_store
from lookalike.service.auth import TokenFile
from lookalike.service.itembank import ItemBankService, ItemBankSettings
from lookalike.service.metrics import Metrics
from lookalike.service.ratelimit import Rate
from lookalike.service.tuning import tuning_summary
from lookalike.service.uploads import UploadDir
from lookalike.towers.adapter import load_adapter
from lookalike.towers.user import UserTower

if TYPE_CHECKING:
    from lookalike.tagging.images import ImageTagger


class ServiceSettings(BaseModel):
    """Everything `lookalike serve` can set; one validated object, as for training runs."""

    checkpoint: str | None = Field(None, description="trained checkpoint; None serves the item bank alone")
    store: str = "embedded://runs/service/store"
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
    user_tower: str | None = Field(None, description="a trained user tower (train-user-tower): profile=tower")
    profile: Literal["multi-interest", "mean", "tower"] = Field(
        "multi-interest", description="how customer_input reads a history (a request may name its own)"
    )
    event_weights: dict[str, float] | None = Field(
        None, description="weight of each history event type (default: recommend/profile.py EVENT_WEIGHTS)"
    )
    experiment: str | None = Field(None, description="an A/B experiment file (recommend/experiments.py)")
    interest_fields: list[str] = Field(
        default_factory=list,
        description="a history interest ranks among products sharing the values of these fields its events agree on",
    )
    half_life_days: float = Field(30.0, gt=0, description="a history event's weight halves every this many days")
    best_seller_window_days: int = Field(
        BEST_SELLER_WINDOW_DAYS,
        ge=1,
        description="top10_to_new's best sellers are the units of purchase events over this many days (when any)",
    )
    category_field: str | None = Field(
        None, description="attribute counted per category and in the category mix (default: the model's)"
    )
    itembank: ItemBankSettings | None = Field(None, description="an exam item bank served under /api/itembank")
    adapter: str | None = Field(
        None, description="a compact adapter file: the store holds its outputs and queries are mapped by it"
    )
    reranker: Literal["listwise"] | None = Field(
        None, description="the second stage ordering the first stage's top candidates (None: off)"
    )
    reranker_model: str | None = Field(None, description="the reranker's file (lookalike train-reranker)")
    reranker_depth: int = Field(100, ge=2, le=1000, description="candidates the reranker orders")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v is None else check_device(v)

    @model_validator(mode="after")
    def _consistent(self) -> "ServiceSettings":
        if self.checkpoint is None and self.itembank is None:
            raise ValueError("nothing to serve: give a checkpoint (--model), an item bank (--itembank), or both")
        if self.auth_reads and not self.auth_file:
            raise ValueError("auth_reads needs an auth_file")
        if self.rate_limit:
            Rate.parse(self.rate_limit)
        if self.reranker and not self.reranker_model:
            raise ValueError("reranker listwise needs its model file (--reranker-model FILE)")
        if self.reranker_model and not self.reranker:
            raise ValueError("--reranker-model given without --reranker listwise")
        return self


class Core:
    """What every served app holds, with a catalogue or without one (an item bank alone): the settings, the
    token file, the request metrics, the upload limit and the item bank, if any."""

    def __init__(self, s: ServiceSettings):
        self.settings = s
        self.tokens = TokenFile(s.auth_file) if s.auth_file else None
        self.metrics = Metrics()
        self.write_lock = threading.Lock()
        self.max_bytes = int(s.max_upload_mb * 1024 * 1024)
        self.itembank = (
            ItemBankService(s.itembank, s.cache_dir, exact=s.search == "exact") if s.itembank is not None else None
        )

    def close(self) -> None:
        if self.itembank is not None:
            self.itembank.close()

    def release(self) -> None:
        """Give up the stores this process holds, at a served process's shutdown (workers.py)."""
        if self.itembank is not None:
            self.itembank.store.release()

    def read_upload(self, f: UploadFile, what: str) -> bytes:
        data = f.file.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise HTTPException(
                413, f"{what} {f.filename!r} is larger than the {self.settings.max_upload_mb:g} MB limit"
            )
        return data


@dataclass
class Compact:
    """An experiment variant served in an adapter's compact space: the encoder mapping by that adapter, the store
    holding its outputs (filled by `catalog ingest --adapter`) and the recommender on it."""

    enc: QueryEncoder
    store: VectorStore
    rec: Recommender


class Service(Core):
    """State shared by the endpoints: one store, one model, the recommenders, the metrics, and the thread
    that keeps the whole-catalogue statistics current (started here, stopped by `close`)."""

    def __init__(self, s: ServiceSettings):
        assert s.checkpoint is not None, "a catalogue is served from a checkpoint"
        super().__init__(s)
        self.rule = NewRule.parse(s.new_rule)
        self.enc = QueryEncoder.load(s.checkpoint, s.cache_dir, s.device, adapter=s.adapter)
        self.store = open_store(s.store, self.enc.dim, space=self.enc.space)
        # S2's second stage, loaded (and a bad file refused) at start-up, never on a request
        self.rerank = Rerank(load_reranker(s.reranker_model), s.reranker_depth) if s.reranker_model else None
        category, colour = report_fields(self.enc, s.colour_field, s.category_field)
        self.stats = BackgroundStatistics(self.store, s.stats_interval, s.store, s.stats_subprocess_from)
        self.rec = Recommender(self.store, category, colour, exact=s.search == "exact", statistics=self.stats)
        self.profile_settings = ProfileSettings(
            event_weights={**EVENT_WEIGHTS, **(s.event_weights or {})},
            half_life_days=s.half_life_days,
            interest_fields=tuple(s.interest_fields),
        )
        self.experiment = Experiment.load(s.experiment) if s.experiment else None
        self.compact: dict[str, Compact] = {}  # experiment variant → its compact space (see `Compact`)
        for v in self.experiment.variants if self.experiment else ():
            where = f"experiment {s.experiment}, variant {v.name}"
            if v.reranker and self.rerank is None:
                raise LookalikeError(f"{where} turns the reranker on: serve --reranker listwise --reranker-model FILE")
            if v.adapter is not None and v.store is not None:
                if self.enc.adapter is not None:
                    raise LookalikeError(f"{where}: an adapter variant needs the service in the model's own space")
                enc = self.enc.adapted(load_adapter(v.adapter)[0])
                store = open_store(v.store, enc.dim, space=enc.space)
                rec = Recommender(store, category, colour, exact=s.search == "exact")
                self.compact[v.name] = Compact(enc, store, rec)
        self.user_tower = UserTower.load(s.user_tower, self.enc.dim) if s.user_tower else None
        if s.profile == "tower" and self.user_tower is None:
            raise LookalikeError("profile tower needs a user tower (--user-tower U.pt)")
        self.events = open_events(self.store)  # customers' events and the online KPIs, beside the catalogue
        self.stats.watch_sales(self.events.purchases, self.events.units_sold, s.best_seller_window_days)
        self.rec.gallery(self.enc.hub_bias)  # starts computing the offsets' bound that certifies /api/search lists
        self.uploads = UploadDir(s.upload_dir)
        self.upload_dir = self.uploads.path
        self.swept = self.uploads.sweep(self.store)  # leftovers of a crashed writer, counted in the log
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
        self.tuning = tuning_summary(s.checkpoint)  # the study behind the model, if it came from `tune` (read once)
        self.recent: deque = deque(maxlen=6)  # recent result lists for the dashboard's image grids
        self._tagger: ImageTagger | None = None
        self.stats.start()

    def close(self) -> None:
        """Stop the statistics thread (at shutdown, before the store is released)."""
        self.stats.stop()
        self.events.close()
        super().close()

    def release(self) -> None:
        self.store.release()
        for c in self.compact.values():
            c.store.release()
        super().release()

    def mirror(self, item: StoreItem | None, deleted: str | None = None) -> None:
        """Repeat a catalogue write of the primary store (under `write_lock`, after it committed) in every compact
        variant's store, the vector mapped by that variant's adapter. Not one transaction with the primary
        write: after a crash between them `catalog ingest --adapter` brings the compact store level again."""
        for c in self.compact.values():
            if deleted is not None:
                c.store.delete([deleted])
            elif item is not None:
                c.store.upsert([StoreItem(item.id, c.enc.adapt(item.vector[None])[0], item.metadata)])

    # --- helpers -----------------------------------------------------------------------------------
    def decode_upload(self, f: UploadFile, what: str = "image") -> Image.Image:
        return decode_image(self.read_upload(f, what), f"{what} {f.filename!r}")

    def image_vector(self, f: UploadFile, what: str = "image") -> np.ndarray:
        return self.enc.images([self.decode_upload(f, what)])[0]

    @property
    def has_tagger(self) -> bool:
        return self.enc.payload.get("tagger") is not None

    def image_tagger(self) -> "ImageTagger":
        """The checkpoint's tagger (built on first use: the service starts as fast without one); 409 when the
        checkpoint was trained before tagging existed."""
        if self._tagger is None:
            from lookalike.tagging.images import ImageTagger

            if self.enc.payload.get("tagger") is None:
                raise HTTPException(409, "the served checkpoint has no tagger: retrain it with `lookalike train`")
            with self.write_lock:
                if self._tagger is None:
                    self._tagger = ImageTagger.of(self.enc)
        return self._tagger

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

    def served(
        self, request: Request, endpoint: str, ids: list[str], variant: str | None = None, customer: str | None = None
    ) -> str:
        """Log a recommendation list under the request's id (the `request_id` events cite); returns the id."""
        rid = request.state.request_id
        self.events.served(rid, endpoint, ids, variant, customer)
        return rid

    def reranking(self, diversity: float, on: bool | None = None) -> Rerank | None:
        """The reranker a list is ordered by: the served one (`on`: an experiment variant's choice, None: the
        service's), unless the request asked for MMR diversity, the other way to diversify."""
        use = self.rerank is not None if on is None else on
        if use and self.rerank is None:
            raise LookalikeError("this variant asks for the reranker, but the service has none (--reranker-model)")
        return self.rerank if use and diversity == 0 else None

    def ranking_path(self, res: dict, enc: QueryEncoder | None = None) -> dict:
        """Which path ranked a list: the first stage (exact or the store's ANN index), its depth, whether the list
        is certified exact, the second stage (the reranker's name, or null) and the space of the vectors
        ("model", or "adapter:FINGERPRINT"; `enc`: a compact variant's encoder)."""
        space = (enc or self.enc).space
        out = {"search": self.settings.search, "reranker": res.get("reranker"), "space": space or "model"}
        if "certified" in res:
            out |= {"certified": res["certified"], "depth": res["depth"]}
        return out

    def remember(self, label: str, res: dict) -> None:
        self.recent.appendleft({"query": label, "items": self.render_list(res)["items"][:10]})
