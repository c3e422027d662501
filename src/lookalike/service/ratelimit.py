"""Per-client request rate limiting: a token bucket per client address, as plain ASGI middleware.

A bucket holds up to N requests and refills at N per period, so `600/minute` allows bursts of 600 and
10 a second sustained, while `10/second` allows bursts of 10. A refused request answers 429 with
Retry-After (whole seconds until one request's worth has refilled). Buckets are keyed by the client
address uvicorn reports (behind a reverse proxy that is the X-Forwarded-For address when the proxy is
trusted, see uvicorn's --forwarded-allow-ips); idle buckets are dropped so memory stays bounded.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from lookalike.errors import LookalikeError

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


@dataclass(frozen=True)
class Rate:
    requests: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour|s|m|h)\s*", text or "")
        if not m or int(m.group(1)) < 1:
            raise LookalikeError(f"rate limit must look like 20/second, 600/minute or 10000/hour, got {text!r}")
        unit = {"s": "second", "m": "minute", "h": "hour"}.get(m.group(2), m.group(2))
        return cls(int(m.group(1)), PERIODS[unit])

    def __str__(self) -> str:
        unit = {v: k for k, v in PERIODS.items()}[self.period]
        return f"{self.requests}/{unit}"


class TokenBuckets:
    """One bucket per key; thread-safe; at most `max_keys` buckets (least recently used dropped first)."""

    def __init__(self, rate: Rate, max_keys: int = 100_000, clock=time.monotonic):
        self.capacity = float(rate.requests)
        self.per_second = rate.requests / rate.period
        self.max_keys, self.clock = max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if the request may go ahead (one token taken), else the seconds until it could."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.per_second)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.per_second
            self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


class RateLimit:
    """ASGI middleware answering 429 + Retry-After once a client's bucket is empty."""

    def __init__(self, app, rate: Rate):
        self.app, self.rate, self.buckets = app, rate, TokenBuckets(rate)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "unknown")
        if wait > 0:
            retry = max(1, math.ceil(wait))
            return await JSONResponse(
                {"detail": f"rate limit of {self.rate} per client exceeded; retry in {retry} s"},
                status_code=429,
                headers={"Retry-After": str(retry)},
            )(scope, receive, send)
        await self.app(scope, receive, send)
