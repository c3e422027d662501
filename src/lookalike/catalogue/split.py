"""Deterministic train/val/test split by product id, stratified by category.

Each id gets a position from a hash of (seed, id), so a product lands in the same split whatever
order the catalogue is read in and whatever else is added to it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from lookalike.catalogue.schema import Catalogue
from lookalike.errors import LookalikeError


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
        if n >= 3:  # every category with 3+ products appears in every split (that is asked for)
            n_test, n_val = (max(n_test, 1) if test_fraction else 0), max(n_val, 1)
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test : n_test + n_val]
        out["train"] += ids[n_test + n_val :]
    return {k: sorted(v) for k, v in out.items()}


def cold_start_values(catalogue: Catalogue, field: str, fraction: float, seed: int) -> list[str]:
    """Values of `field` to hold out, in hash order, until they cover `fraction` of the products; a value
    that alone covers more is skipped, so one huge article type never becomes the whole test split."""
    counts: dict[str, int] = defaultdict(int)
    for p in catalogue.products:
        counts[p.value(field)] += 1
    target, chosen, covered = fraction * len(catalogue), [], 0
    for v in sorted(counts, key=lambda v: _u(seed, f"value:{v}")):
        if covered >= target:
            break
        if counts[v] <= target:
            chosen.append(v)
            covered += counts[v]
    if not chosen and len(counts) > 1:  # every value is bigger than the target: hold out the smallest one
        chosen = [min(counts, key=lambda v: (counts[v], _u(seed, f"value:{v}")))]
    return sorted(chosen)


def cold_start_split(
    catalogue: Catalogue,
    field: str,
    val_fraction: float,
    seed: int,
    values: list[str] | None = None,
    fraction: float = 0.1,
) -> dict[str, list[str]]:
    """Zero-shot cold start: every product whose `field` (article type, season …) has one of `values` is
    test; training and validation never see those values. `values=None` picks them by hash (`fraction`)."""
    if field not in catalogue.schema.fields:
        raise LookalikeError(f"cold-start field {field!r} is not an attribute field {catalogue.schema.fields}")
    present = {p.value(field) for p in catalogue.products}
    values = cold_start_values(catalogue, field, fraction, seed) if values is None else values
    if not values:
        raise LookalikeError(f"cold-start field {field!r} has a single value; nothing can be held out")
    missing = sorted(set(values) - present)
    if missing:
        raise LookalikeError(
            f"cold-start values {missing} of {field!r} are not in the catalogue; it has {sorted(present)[:20]}"
        )
    held = set(values)
    test = [p.id for p in catalogue.products if p.value(field) in held]
    rest = split_ids(
        catalogue.subset([p.id for p in catalogue.products if p.value(field) not in held]), val_fraction, 0.0, seed
    )
    return {"train": rest["train"], "val": rest["val"], "test": sorted(test)}


def subsample(catalogue: Catalogue, limit: int, seed: int) -> Catalogue:
    """The first `limit` products in hash order: a random, order-independent, reproducible subset."""
    ids = sorted((p.id for p in catalogue.products), key=lambda i: _u(seed + 1, i))[:limit]
    return catalogue.subset(ids)
