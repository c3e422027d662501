"""Request counts and latencies per endpoint, as KPI figures (p50/p95/p99) and in Prometheus format.

Prometheus histograms give buckets, not exact quantiles, so the KPI view keeps the last latencies of
each endpoint itself; the exposition uses prometheus_client with a registry per app (tests run
several apps in one process). Every figure is kept over a window of recent requests, so reading them
costs nothing that grows with the catalogue.
"""

from __future__ import annotations

import collections
import threading
from collections import defaultdict, deque

import numpy as np

from lookalike.recommend.statistics import ProxyCheck


class Metrics:
    def __init__(self, window: int = 10_000):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lookalike_requests", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "lookalike_request_seconds",
            "request latency",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5),
        )
        self.top1 = Histogram(
            "lookalike_top1_similarity",
            "similarity of the first result",
            ["endpoint"],
            registry=self.registry,
            buckets=tuple(np.round(np.linspace(-0.2, 1.0, 13), 2)),
        )
        self.catalogue = Gauge(
            "lookalike_catalogue_products", "products in the store", ["kind"], registry=self.registry
        )
        # The online KPIs' counters, as the event log holds them (shared by every worker: set at each scrape)
        self.online_events = Gauge(
            "lookalike_online_events", "stored events", ["type", "endpoint", "variant"], registry=self.registry
        )
        self.online_lists = Gauge(
            "lookalike_online_lists",
            "recommendation lists served, clicked in their top 10, and bought from",
            ["kind", "endpoint", "variant"],
            registry=self.registry,
        )
        self.online_new_shown = Gauge(
            "lookalike_online_new_products_shown", "new products shown at least once", registry=self.registry
        )
        self.proxy_spearman = Gauge(
            "lookalike_best_seller_proxy_spearman",
            "Spearman rank correlation of the centrality proxy with units sold over the best-seller window",
            registry=self.registry,
        )
        self.proxy_products = Gauge(
            "lookalike_best_seller_proxy_products",
            "established products with units sold over the window (the correlation's sample)",
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._lat: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=window))
        self._counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._top1: deque = deque(maxlen=window)
        self._ild: deque = deque(maxlen=window)
        self.lists: deque = deque(maxlen=window)  # recommended new-product id lists, for coverage
        self._served: collections.Counter = collections.Counter()  # the ids in `lists`, with how many lists hold each

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        with self._lock:
            self._lat[(method, endpoint)].append(seconds)
            self._counts[(method, endpoint)][str(status)] += 1

    def observe_results(self, endpoint: str, lists: list[dict], recommended_new: bool) -> None:
        for res in lists:
            if res["items"]:
                self.top1.labels(endpoint).observe(res["items"][0][1])
                with self._lock:
                    self._top1.append(res["items"][0][1])
                    self._ild.append(res["intra_list_diversity"])
                    if recommended_new:
                        self._remember([i for i, _, _ in res["items"]])

    def _remember(self, ids: list[str]) -> None:
        """Append a served list, keeping `_served` equal to the window's ids (caller holds the lock)."""
        if len(self.lists) == self.lists.maxlen:
            for i in self.lists[0]:
                self._served[i] -= 1
                if not self._served[i]:
                    del self._served[i]
        self.lists.append(ids)
        self._served.update(ids)

    def served_ids(self) -> list[str]:
        """The distinct ids of the window's served lists (for coverage: O(window), not O(catalogue))."""
        with self._lock:
            return list(self._served)

    def summary(self) -> dict:
        with self._lock:
            endpoints = {}
            for (method, ep), lat in sorted(self._lat.items()):
                ms = np.asarray(lat) * 1000
                counts = dict(self._counts[(method, ep)])
                endpoints[f"{method} {ep}"] = {
                    "requests": sum(counts.values()),
                    "by_status": counts,
                    **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
                }
            return {
                "endpoints": endpoints,
                "mean_top1_similarity": round(float(np.mean(self._top1)), 4) if self._top1 else None,
                "mean_intra_list_diversity": round(float(np.mean(self._ild)), 4) if self._ild else None,
                "lists_served": len(self.lists),
            }

    def set_online(self, counters: dict[str, int]) -> None:
        """The event log's counters (recommend/events.py keys) into the online gauges."""
        for key, n in counters.items():
            parts = key.split("|")
            if parts[0] == "events" and len(parts) == 4:
                self.online_events.labels(*parts[1:]).set(n)
            elif parts[0].startswith("lists_") and len(parts) == 3:
                self.online_lists.labels(parts[0].removeprefix("lists_"), *parts[1:]).set(n)
            elif key == "new_shown":
                self.online_new_shown.set(n)

    def set_proxy(self, proxy: ProxyCheck | None) -> None:
        """The latest best-seller-proxy check into its gauges (NaN while there is none or it is undefined)."""
        rho = proxy.spearman if proxy is not None else None
        self.proxy_spearman.set(float("nan") if rho is None else rho)
        self.proxy_products.set(proxy.n_products if proxy is not None else 0)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
