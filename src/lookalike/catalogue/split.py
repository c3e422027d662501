"""Deterministic train/val/test split by product id, stratified by category.

Each id gets a position from a hash of (seed, id), so a product lands in the same split whatever
order the catalogue is read in and whatever else is added to it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from lookalike.catalogue.schema import Catalogue


def _u(seed: int, pid: str) -> float:
    return int.from_bytes(hashlib.sha1(f"{seed}:{pid}".encode()).digest()[:8], "big") / 2**64


def split_ids(catalogue: Catalogue, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    field = catalogue.schema.category_field
    groups: dict[str, list[str]] = defaultdict(list)
    for p in catalogue.products:
        groups[p.value(field) if field else ""].append(p.id)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ids in groups.values():
        ids = sorted(ids, key=lambda i: _u(seed, i))
        n = len(ids)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:  # every category with 3+ products appears in every split
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test:n_test + n_val]
        out["train"] += ids[n_test + n_val:]
    return {k: sorted(v) for k, v in out.items()}


def subsample(catalogue: Catalogue, limit: int, seed: int) -> Catalogue:
    """The first `limit` products in hash order: a random, order-independent, reproducible subset."""
    ids = sorted((p.id for p in catalogue.products), key=lambda i: _u(seed + 1, i))[:limit]
    return catalogue.subset(ids)
