"""The vector-store contract every backend keeps, and the checks they share.

Scores are inner products of unit vectors (= cosine), best first, ties broken by id, so two
backends holding the same data return the same exact top-K. Filters are equality / IN on metadata
fields; a field no stored item has is a user mistake and is named in the error.

Every store also keeps exact counts (`counts()`): its size, and, for the metadata it was asked to count
(`count_by`), the items per value of each counted field, in all and among the items whose flag field
is JSON true (the service counts `is_new` and the catalogue's category and colour fields). The counts
change in each write's own transaction, so they are never half-updated and cost O(1) to read, whichever
process or worker wrote.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.vectors import unit

Scalar = str | int | float | bool
MetaValue = Scalar | list[str]
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
        if not known_fields:
            raise LookalikeError(f"cannot filter on {f!r}: the store holds no item yet, so it has no fields")
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


def count_key(v: object) -> str:
    """The key a metadata value is counted under: a string as itself, a missing value as "", anything else as
    its JSON text (so both backends, which store JSON, count the same value under the same key)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class StoreCounts:
    """A store's exact counts at one version: `size` items, `flagged` of them with the flag field true, and per
    counted field {value key: (items, flagged items)} (values no item has are absent)."""

    version: int
    size: int
    flag: str | None
    flagged: int
    fields: dict[str, dict[str, tuple[int, int]]]

    def per_value(self, field: str, flagged: bool = False) -> dict[str, int]:
        """{value: items} of a counted field (only flagged items with `flagged`), most first, then by value."""
        if field not in self.fields:
            raise LookalikeError(f"the store does not count field {field!r}; it counts {sorted(self.fields)}")
        rows = ((v, c[1] if flagged else c[0]) for v, c in self.fields[field].items())
        return dict(sorted(((v, n) for v, n in rows if n), key=lambda vn: (-vn[1], vn[0])))


class Tally:
    """The counts as a backend keeps them: changed item by item inside a write, saved with it (`to_json`)."""

    def __init__(self, flag: str | None = None, fields: Iterable[str] = (), size: int = 0, flagged: int = 0):
        self.flag, self.fields = flag, tuple(dict.fromkeys(fields))
        self.size, self.flagged = size, flagged
        self.values: dict[str, dict[str, list[int]]] = {f: {} for f in self.fields}

    @property
    def keys(self) -> list[str]:
        """The metadata fields a write must read from the items it replaces or deletes."""
        return list(dict.fromkeys(([self.flag] if self.flag else []) + list(self.fields)))

    def add(self, md: Mapping, n: int = 1) -> None:
        """Count `n` items (negative: uncount) with metadata `md` (at least the fields in `keys`)."""
        flagged = self.flag is not None and md.get(self.flag) is True
        self.size += n
        self.flagged += n if flagged else 0
        for f in self.fields:
            key = count_key(md.get(f))
            c = self.values[f].setdefault(key, [0, 0])
            c[0] += n
            c[1] += n if flagged else 0
            if c[0] == 0:
                del self.values[f][key]

    def covers(self, fields: Iterable[str], flag: str | None) -> bool:
        """Whether these counts already include what `count_by(fields, flag)` asks for."""
        return (flag is None or flag == self.flag) and set(fields) <= set(self.fields)

    def widened(self, fields: Iterable[str], flag: str | None) -> Tally:
        """Empty counts for what is counted now plus `fields` and `flag` (to be filled by a recount)."""
        if flag is not None and self.flag is not None and flag != self.flag:
            raise LookalikeError(
                f"the store counts items flagged by {self.flag!r}; it cannot count by flag {flag!r} as well"
            )
        return Tally(flag or self.flag, [*self.fields, *fields])

    def copy(self) -> Tally:
        return Tally.from_json(self.to_json())

    def to_json(self) -> dict:
        return {"flag": self.flag, "size": self.size, "flagged": self.flagged, "values": self.values}

    @classmethod
    def from_json(cls, d: dict) -> Tally:
        t = cls(d.get("flag"), d.get("values", {}), int(d["size"]), int(d.get("flagged", 0)))
        t.values = {f: {v: [int(c[0]), int(c[1])] for v, c in vals.items()} for f, vals in d.get("values", {}).items()}
        return t

    def counts(self, version: int) -> StoreCounts:
        fields = {f: {v: (c[0], c[1]) for v, c in vals.items()} for f, vals in self.values.items()}
        return StoreCounts(version, self.size, self.flag, self.flagged, fields)


def describe_space(label: str) -> str:
    """A store space's label in words: "" is the model's own space, "adapter:F" vectors mapped by adapter F."""
    return "the model's own space (no adapter)" if not label else f"the space of adapter {label.split(':', 1)[1]}"


class VectorStore(ABC):
    """Unit vectors + metadata under string ids. Writes are all-or-nothing; see the module docstring.

    A store also records the *space* its vectors are in (`use_space`): "" for the model's own space, or
    "adapter:FINGERPRINT" when a compact adapter (towers/adapter.py) mapped them. Whatever writes or queries with
    a space first checks it, so vectors of two spaces are never mixed nor compared."""

    dim: int

    def where(self) -> str:
        """The store, in words, for errors."""
        return type(self).__name__

    def recorded_space(self) -> str | None:
        """The label recorded with the store, or None when none was (a store written before spaces were
        recorded, or one never opened with a space)."""
        return None

    def _record_space(self, label: str) -> None:
        """Record `label` unless a label is recorded already (the first writer wins)."""
        raise LookalikeError(f"{self.where()} cannot record the space of its vectors")

    def check_space(self, label: str, have: str | None, size: int) -> None:
        """Raise unless a store with recorded label `have` (None: none) and `size` items may be used in `label`."""
        if have is None:
            have = "" if size else label  # unrecorded: its items came from the model's own space
        if have != label:
            raise LookalikeError(
                f"store {self.where()} holds vectors of {describe_space(have)}, but {describe_space(label)} was "
                "given: use the --adapter its vectors were ingested with (or none), or ingest into another store"
            )

    def use_space(self, label: str) -> None:
        """Check that the store is in space `label` and record it when the store has none recorded yet."""
        self.check_space(label, self.recorded_space(), len(self))
        if self.recorded_space() is None:
            self._record_space(label)
            self.check_space(label, self.recorded_space(), len(self))  # another process may have been first

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
    def counts(self) -> StoreCounts:
        """The exact counts (size, flagged items, items per value of each counted field) and the version they
        belong to, read in O(1) of the catalogue size; see the module docstring."""

    @abstractmethod
    def count_by(self, fields: Iterable[str] = (), flag: str | None = None) -> StoreCounts:
        """Declare what the store counts from now on: the items per value of each of `fields`, in all and among
        the items whose `flag` field is JSON true. The declaration is saved with the store and adds to what
        was counted before (a field once counted stays counted; one flag per store). Declaring what is already
        counted changes nothing; anything new recounts every item once, in one write transaction."""

    @abstractmethod
    def ids(self, offset: int = 0, limit: int | None = None) -> list[str]:
        """Stored ids in id order, from `offset`, at most `limit` of them (None: all)."""

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

    def __len__(self) -> int:
        """How many items are stored (the maintained count: no scan)."""
        return self.counts().size

    def close(self) -> None:  # noqa: B027 (optional: a store with nothing to close inherits this)
        """Release what the store holds (a connection, a lock file); nothing by default."""

    def release(self) -> None:
        """Close, and give up this process's hold on a database it started (see PgVectorStore)."""
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
