"""The vector-store contract every backend keeps, and the checks they share.

Scores are inner products of unit vectors (= cosine), best first, ties broken by id, so two
backends holding the same data return the same exact top-K. Filters are equality / IN on metadata
fields; a field no stored item has is a user mistake and is named in the error.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.vectors import unit

Scalar = Union[str, int, float, bool]
MetaValue = Union[Scalar, list[str]]
Filters = dict[str, Scalar | list[Scalar]]


@dataclass
class StoreItem:
    id: str
    vector: np.ndarray
    metadata: dict[str, MetaValue] = field(default_factory=dict)


def _is_scalar(v) -> bool:
    return isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))


def check_items(items: Iterable[StoreItem], dim: int) -> list[StoreItem]:
    """Validated items with unit float32 vectors; a repeated id keeps its last version (one upsert = one state)."""
    out: dict[str, StoreItem] = {}
    for it in items:
        if not isinstance(it.id, str) or not it.id or len(it.id) > 512:
            raise LookalikeError(f"item id must be a non-empty string of at most 512 characters, got {it.id!r}")
        v = np.asarray(it.vector, np.float32).reshape(-1)
        if v.shape != (dim,):
            raise LookalikeError(f"item {it.id!r}: vector has {v.size} dimensions, the store has {dim}")
        norm = float(np.linalg.norm(v))
        if not np.isfinite(v).all() or norm == 0.0:
            raise LookalikeError(f"item {it.id!r}: vector is zero or not finite")
        if not isinstance(it.metadata, dict):
            raise LookalikeError(f"item {it.id!r}: metadata must be an object")
        for k, val in it.metadata.items():
            if not isinstance(k, str) or not k:
                raise LookalikeError(f"item {it.id!r}: metadata field names must be non-empty strings, got {k!r}")
            ok = _is_scalar(val) or (isinstance(val, list) and all(isinstance(x, str) for x in val))
            if not ok:
                raise LookalikeError(
                    f"item {it.id!r}: metadata field {k!r} has unsupported value {val!r} "
                    "(string, number, boolean or list of strings)"
                )
        # `unit` keeps an already unit vector (one read back from a store) bit for bit: dividing it by its
        # norm again moves it by an ulp, so an update that keeps the image would change its vector.
        out[it.id] = StoreItem(it.id, unit(v), dict(it.metadata))
    return list(out.values())


def check_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    """Unit-normalised (n, dim) float32 queries, so scores are cosines whatever the caller passed."""
    q = np.asarray(queries, np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise LookalikeError(f"queries must have shape (n, {dim}), got {tuple(np.shape(queries))}")
    if not np.isfinite(q).all():
        raise LookalikeError("queries contain NaN or infinite values")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise LookalikeError(f"k must be a positive integer, got {k!r}")
    if (np.linalg.norm(q, axis=1) == 0).any():
        raise LookalikeError("a query vector is all zeros")
    return unit(q)


def normalize_filters(filters: Filters | None, known_fields: set[str]) -> dict[str, list[Scalar]]:
    """{field: [allowed values]}; unknown fields and unsupported values are named."""
    out: dict[str, list[Scalar]] = {}
    for f, val in (filters or {}).items():
        if f not in known_fields:
            raise LookalikeError(f"unknown filter field {f!r}; known fields: {sorted(known_fields)}")
        vals = val if isinstance(val, list) else [val]
        if not vals or not all(_is_scalar(x) for x in vals):
            raise LookalikeError(
                f"filter {f!r} needs a value or a non-empty list of strings, numbers or booleans; got {val!r}"
            )
        out[f] = vals
    return out


def value_key(v: Scalar) -> tuple[str, object]:
    """JSON equality: booleans are not numbers, 1 == 1.0 (as in PostgreSQL's jsonb)."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", float(v))
    return ("s", v)


class VectorStore(ABC):
    """Unit vectors + metadata under string ids. Writes are all-or-nothing; see the module docstring."""

    dim: int

    @abstractmethod
    def upsert(self, items: Iterable[StoreItem]) -> int:
        """Insert or replace items in one transaction; returns how many were written."""

    def load(self, batches: Iterable[Iterable[StoreItem]], total: int | None = None) -> int:
        """Bulk ingest: every batch is one all-or-nothing upsert, so a crash midway keeps whole batches
        only and a rerun (upserts are idempotent) completes the rest. Backends override it to defer
        their index work to after the last batch; `total`, when known, tells them how big the load is."""
        return sum(self.upsert(b) for b in batches)

    @abstractmethod
    def delete(self, ids: Iterable[str]) -> int:
        """Remove items (gone from search at once); returns how many existed."""

    @abstractmethod
    def get(self, id: str) -> StoreItem | None: ...

    def get_many(self, ids: list[str]) -> list[StoreItem | None]:
        """Several items at once, in the order asked (None where missing)."""
        return [self.get(i) for i in ids]

    @abstractmethod
    def version(self) -> int:
        """A number that changes whenever the stored contents change, whichever process or worker wrote
        them: caches of whole-catalogue statistics are keyed by it."""

    @abstractmethod
    def ids(self) -> list[str]: ...

    @abstractmethod
    def fields(self) -> set[str]:
        """Metadata field names some stored item has (what filters may name)."""

    @abstractmethod
    def items(self) -> tuple[list[str], np.ndarray, list[dict]]:
        """Everything, for whole-catalogue statistics: (ids, vectors (n, dim), metadata), in id order."""

    @abstractmethod
    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exact: bool = True,
        exclude_ids: list[str] | None = None,
    ) -> list[list[tuple[str, float]]]: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def close(self) -> None:
        pass

    def release(self) -> None:
        """Close, and give up this process's hold on a database it started (see PgVectorStore)."""
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
