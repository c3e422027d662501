"""Online A/B experiments on the recommender: variants named in a JSON file, customers split sticky by a hash of
their id, and the report (per variant CTR@10 and purchase rate with intervals, the two-proportion test against
the first variant, the minimum detectable effect at the current sample size, and whether it is too early to call).

    {"name": "profiles-1", "variants": [
        {"name": "mean", "share": 0.5, "profile": "mean"},
        {"name": "multi", "share": 0.5, "profile": "multi-interest", "diversity": 0.1}],
     "min_effect": 0.01, "min_lists": 200}

A variant may set `profile` (mean | multi-interest | tower), `diversity`, `reranker` (true | false: S2's list-wise
reranker on or off; on needs `serve --reranker listwise --reranker-model FILE`) and the compact space: `adapter`
(an adapter file, `lookalike train-adapter`) with `store` (the URL of a store filled by `catalog ingest --adapter`
with that file). A compact variant's customers are ranked on that store, their history and queries mapped by the
adapter; the service holds both stores and writes over the API reach both. Relative adapter paths are read from
the experiment file's folder.

    {"name": "s2-1", "variants": [
        {"name": "512", "share": 0.5, "reranker": false},
        {"name": "128+rerank", "share": 0.5, "reranker": true,
         "adapter": "adapter.pt", "store": "embedded:///srv/lookalike/store-128"}]}

The variant is recorded with each served list
(`NAME:VARIANT`) and inherited by the events that cite the list's `request_id`, so the counters of the event log
(recommend/events.py, kept in the events' own transactions) are all the report reads. The unit of the split is the
customer, the unit of the rates a served list; lists of one customer are not independent, so with few customers
the intervals are optimistic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import LookalikeError
from lookalike.evaluation.abtest import minimum_detectable_effect, two_proportion_test, wilson_ci
from lookalike.recommend.events import online_kpi
from lookalike.recommend.profile import PROFILES

VARIANT_KEYS = {"name", "share", "profile", "diversity", "reranker", "adapter", "store"}


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    profile: str | None = None
    diversity: float | None = None
    reranker: bool | None = None  # None: as the service serves (its --reranker)
    adapter: str | None = None  # a compact variant: the adapter file …
    store: str | None = None  # … and the store holding its outputs


@dataclass(frozen=True)
class Experiment:
    name: str
    variants: tuple[Variant, ...]
    min_effect: float = 0.01  # the absolute difference worth detecting (CTR@10 / purchase rate)
    min_lists: int = 200  # lists per variant before anything is called

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise LookalikeError(f"cannot read experiment file {path}: {e}") from None
        except json.JSONDecodeError as e:
            raise LookalikeError(f"experiment file {path} is not valid JSON: {e}") from None
        return cls.from_json(raw, str(path), Path(path).parent)

    @classmethod
    def from_json(cls, raw: object, where: str = "experiment", folder: Path | None = None) -> Experiment:
        if not isinstance(raw, dict):
            raise LookalikeError(f"{where}: an experiment is a JSON object")
        unknown = sorted(set(raw) - {"name", "variants", "min_effect", "min_lists"})
        if unknown:
            raise LookalikeError(f"{where}: unknown field(s) {unknown}")
        name = raw.get("name")
        if not isinstance(name, str) or not name or ":" in name or len(name) > 64:
            raise LookalikeError(f"{where}: name must be 1-64 characters without ':', got {name!r}")
        vs = raw.get("variants")
        if not isinstance(vs, list) or len(vs) < 2:
            raise LookalikeError(f"{where}: variants must be a list of at least two")
        variants = []
        for i, v in enumerate(vs):
            if not isinstance(v, dict) or set(v) - VARIANT_KEYS:
                raise LookalikeError(
                    f"{where}: variants[{i}] must be an object with fields among {sorted(VARIANT_KEYS)}"
                )
            vname, share = v.get("name"), v.get("share")
            if not isinstance(vname, str) or not vname or ":" in vname or len(vname) > 64:
                raise LookalikeError(f"{where}: variants[{i}].name must be 1-64 characters without ':', got {vname!r}")
            if not isinstance(share, (int, float)) or isinstance(share, bool) or not share > 0:
                raise LookalikeError(f"{where}: variants[{i}].share must be a positive number, got {share!r}")
            if v.get("profile") is not None and v["profile"] not in PROFILES:
                raise LookalikeError(f"{where}: variants[{i}].profile must be one of {list(PROFILES)}")
            d = v.get("diversity")
            if d is not None and (not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 <= d <= 1):
                raise LookalikeError(f"{where}: variants[{i}].diversity must be a number from 0 to 1, got {d!r}")
            r = v.get("reranker")
            if r is not None and not isinstance(r, bool):
                raise LookalikeError(f"{where}: variants[{i}].reranker must be true or false, got {r!r}")
            adapter, store = v.get("adapter"), v.get("store")
            if (adapter is None) != (store is None):
                raise LookalikeError(
                    f"{where}: variants[{i}] needs both adapter (the file) and store (the URL of the store "
                    "`catalog ingest --adapter` filled with it), or neither"
                )
            for key, val in (("adapter", adapter), ("store", store)):
                if val is not None and (not isinstance(val, str) or not val):
                    raise LookalikeError(f"{where}: variants[{i}].{key} must be a non-empty string, got {val!r}")
            if adapter is not None and v.get("profile") == "tower":
                raise LookalikeError(f"{where}: variants[{i}]: the user tower gives 512-d queries, not the adapter's")
            if adapter is not None and folder is not None and not Path(adapter).is_absolute():
                adapter = str(folder / adapter)
            variants.append(
                Variant(vname, float(share), v.get("profile"), None if d is None else float(d), r, adapter, store)
            )
        if len({v.name for v in variants}) != len(variants):
            raise LookalikeError(f"{where}: variant names must be distinct")
        total = sum(v.share for v in variants)
        if abs(total - 1.0) > 1e-6:
            raise LookalikeError(f"{where}: variant shares must sum to 1, got {total:g}")
        min_effect, min_lists = raw.get("min_effect", 0.01), raw.get("min_lists", 200)
        if not isinstance(min_effect, (int, float)) or not 0 < min_effect < 1:
            raise LookalikeError(f"{where}: min_effect must be between 0 and 1, got {min_effect!r}")
        if not isinstance(min_lists, int) or min_lists < 1:
            raise LookalikeError(f"{where}: min_lists must be a positive integer, got {min_lists!r}")
        return cls(name, tuple(variants), float(min_effect), min_lists)

    def assign(self, customer_id: str) -> Variant:
        """The customer's variant: a point in [0, 1) from SHA-256 of (experiment, customer), placed among the
        cumulative shares. Sticky across requests, restarts and workers; independent between experiments."""
        h = int.from_bytes(hashlib.sha256(f"{self.name}\0{customer_id}".encode()).digest()[:8], "big") / 2**64
        acc = 0.0
        for v in self.variants:
            acc += v.share
            if h < acc:
                return v
        return self.variants[-1]

    def label(self, v: Variant) -> str:
        """How the variant is recorded with lists and events."""
        return f"{self.name}:{v.name}"

    def report(self, counters: dict[str, int], alpha: float = 0.05, power: float = 0.8) -> dict:
        """Per variant: lists served, CTR@10 and purchase rate with Wilson intervals; per later variant, the
        two-proportion test against the first, the minimum detectable effect at the current sizes and whether
        it is too early to call (fewer than `min_lists` lists in a group, or not significant while the MDE is
        above `min_effect`)."""
        per = online_kpi(counters)["per_variant"]
        rows = {}
        for v in self.variants:
            c = per.get(self.label(v), {})
            n = c.get("lists_served", 0)
            row: dict = {
                "share": v.share,
                "profile": v.profile,
                "diversity": v.diversity,
                "reranker": v.reranker,
                "adapter": v.adapter,
                "lists_served": n,
            }
            for metric, key in (("ctr@10", "lists_clicked"), ("purchase_rate", "lists_purchased")):
                k = c.get(key, 0)
                ci = wilson_ci(k, n, alpha)
                row[metric] = {"successes": k, "rate": k / n if n else None, "ci": ci}
            rows[v.name] = row
        control = self.variants[0].name
        comparisons = {}
        for v in self.variants[1:]:
            a, b = rows[control], rows[v.name]
            comp = {}
            for metric in ("ctr@10", "purchase_rate"):
                test = two_proportion_test(
                    a[metric]["successes"], a["lists_served"], b[metric]["successes"], b["lists_served"], alpha
                )
                n = a["lists_served"] + b["lists_served"]
                base = (a[metric]["successes"] + b[metric]["successes"]) / n if n else 0.0  # pooled, as under H0
                mde = minimum_detectable_effect(base, a["lists_served"], b["lists_served"], alpha, power)
                small = min(a["lists_served"], b["lists_served"]) < self.min_lists
                significant = bool(test and test["significant"])
                too_early = small or (not significant and (mde is None or mde > self.min_effect))
                comp[metric] = {**(test or {}), "mde": mde, "too_early": too_early}
            comparisons[f"{v.name} vs {control}"] = comp
        return {
            "experiment": self.name,
            "alpha": alpha,
            "power": power,
            "min_effect": self.min_effect,
            "min_lists": self.min_lists,
            "variants": rows,
            "comparisons": comparisons,
        }
