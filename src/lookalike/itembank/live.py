"""The live item bank and the one function that ranks it: `rank_items`, used by `lookalike itembank search`
and by `POST /api/itembank/search`, so one query on one bank gets the same list and scores from both.

An `ItemIndex` keeps what each item needs in memory (text, labels, figure paths, BM25 terms in a `LiveBM25`
that takes writes) and reaches the item vectors through a dense side: a vector store (the service, and the
CLI with `--store`) or exact in-memory rows (the CLI without one). Ranking:

- dense: the query vector's top-k cosines (the store's exact or index search, with the label filter);
- bm25: the top-k BM25 scores over the live items (items sharing no term with the query are not matches);
- hybrid: each list's top-`depth` fused by α·norm(dense) + (1−α)·norm(BM25), min-max or z-score per query
  (retrieval/fusion.py, as in the study); rrf: the same lists fused by reciprocal rank.

Fused ties break by item id (the candidates are put in id order before the one top-k cuts them). Every hit
carries the parts that made it: its raw cosine and BM25 score, each computed exactly even where the item was
in only one of the two lists.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.retrieval.bm25 import LiveBM25

Mode = Literal["dense", "bm25", "hybrid", "rrf"]
MODES: tuple[str, ...] = ("dense", "bm25", "hybrid", "rrf")
Normalisation = Literal["minmax", "zscore"]
FILTER_FIELDS = ("labels",)


@dataclass(frozen=True)
class ItemRecord:
    """What the index keeps of an item besides its vector."""

    id: str
    text: str
    labels: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()

    def metadata(self) -> dict:
        """The item's metadata as stored beside its vector (`image`: the first figure, for the upload sweep)."""
        md: dict = {"text": self.text, "labels": list(self.labels), "figures": list(self.figures)}
        if self.figures:
            md["image"] = self.figures[0]
        return md

    @classmethod
    def from_metadata(cls, item_id: str, md: dict) -> ItemRecord:
        return cls(item_id, str(md.get("text", "")), tuple(md.get("labels") or ()), tuple(md.get("figures") or ()))


@dataclass
class ItemQuery:
    """A query: its unit vector (None when only BM25 ranks), its BM25 terms, and an item id to leave out."""

    vector: np.ndarray | None
    tokens: list[str]
    exclude: str | None = None


@dataclass
class ItemHit:
    id: str
    score: float
    dense: float | None = None
    bm25: float | None = None
    record: ItemRecord | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        r = self.record
        return {
            "id": self.id,
            "score": round(self.score, 6),
            "parts": {
                "dense": None if self.dense is None else round(self.dense, 6),
                "bm25": None if self.bm25 is None else round(self.bm25, 6),
            },
            **({"text": r.text, "labels": list(r.labels), "figures": len(r.figures)} if r else {}),
        }


class DenseSide(Protocol):
    def search(
        self, vector: np.ndarray, k: int, labels: list[str] | None, exclude: str | None
    ) -> list[tuple[str, float]]: ...

    def vectors(self, ids: list[str]) -> list[np.ndarray | None]: ...


class StoreDense:
    """Item vectors in a vector store (`labels` is a stored list, so the label filter is the store's IN)."""

    def __init__(self, store, exact: bool = True):
        self.store, self.exact = store, exact

    def search(self, vector, k, labels, exclude):
        filters = {"labels": labels} if labels else None
        return self.store.search(vector[None, :], k, filters, self.exact, [exclude] if exclude else None)[0]

    def vectors(self, ids):
        return [None if it is None else it.vector for it in self.store.get_many(ids)]


class MemoryDense:
    """Exact search over in-memory rows kept in id order, so ties break by id as in the stores."""

    def __init__(self, ids: list[str], vectors: np.ndarray, labels: list[tuple[str, ...]]):
        order = sorted(range(len(ids)), key=ids.__getitem__)
        self.ids = [ids[i] for i in order]
        self.matrix = np.ascontiguousarray(vectors[order], np.float32)
        self.labels = [set(labels[i]) for i in order]
        self.row = {i: n for n, i in enumerate(self.ids)}

    def search(self, vector, k, labels, exclude):
        from lookalike.retrieval.topk import topk_row

        sc = self.matrix @ np.asarray(vector, np.float32)
        if labels:
            want = set(labels)
            sc[[not (lab & want) for lab in self.labels]] = -np.inf
        if exclude in self.row:
            sc[self.row[exclude]] = -np.inf
        idx, val = topk_row(sc, k)
        return [(self.ids[i], float(v)) for i, v in zip(idx, val)]

    def vectors(self, ids):
        return [self.matrix[self.row[i]] if i in self.row else None for i in ids]


class ItemIndex:
    """The in-memory side of a live bank (records and BM25 terms) beside its dense side. `lock` guards the
    memory structures; a writer commits to the store first and updates the index after (see the service)."""

    def __init__(self, dense: DenseSide, tokenizer=None):
        from lookalike.retrieval.bm25 import KiwiTokenizer

        self.dense = dense
        self.tokenizer = tokenizer or KiwiTokenizer()
        self.bm25 = LiveBM25()
        self.records: dict[str, ItemRecord] = {}
        self.by_label: dict[str, set[str]] = {}
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.records)

    def put_many(self, records: list[ItemRecord], tokens: list[list[str]] | None = None) -> None:
        """Add or replace items in memory (`tokens`: their BM25 terms when already known)."""
        toks = tokens if tokens is not None else self.tokenizer([r.text for r in records])
        with self.lock:
            for r, t in zip(records, toks):
                self._drop_labels(r.id)
                self.records[r.id] = r
                for lab in r.labels:
                    self.by_label.setdefault(lab, set()).add(r.id)
                self.bm25.put(r.id, t)

    def remove(self, item_id: str) -> None:
        with self.lock:
            self._drop_labels(item_id)
            self.records.pop(item_id, None)
            self.bm25.remove(item_id)

    def _drop_labels(self, item_id: str) -> None:
        old = self.records.get(item_id)
        for lab in old.labels if old else ():
            ids = self.by_label.get(lab)
            if ids is not None:
                ids.discard(item_id)
                if not ids:
                    del self.by_label[lab]

    def get(self, item_id: str) -> ItemRecord | None:
        return self.records.get(item_id)

    def query_of(self, item_id: str) -> ItemQuery:
        """An item of the bank as the query: its stored vector and terms, itself left out of the results."""
        with self.lock:
            tokens = self.bm25.tokens_of(item_id)
        if tokens is None:
            raise LookalikeError(f"unknown item id {item_id!r}")
        vector = self.dense.vectors([item_id])[0]
        if vector is None:
            raise LookalikeError(f"unknown item id {item_id!r}")
        return ItemQuery(np.asarray(vector, np.float32), list(tokens), exclude=item_id)


def check_filters(filters: dict | None) -> list[str] | None:
    """The label filter's allowed labels (an item matches when it has any of them), or None."""
    if not filters:
        return None
    if not isinstance(filters, dict):
        raise LookalikeError(f"filters must be a JSON object such as {{'labels': ['A']}}, got {filters!r}")
    unknown = set(filters) - set(FILTER_FIELDS)
    if unknown:
        raise LookalikeError(f"unknown filter field(s) {sorted(unknown)}; item-bank filters take {list(FILTER_FIELDS)}")
    val = filters["labels"]
    vals = val if isinstance(val, list) else [val]
    if not vals or not all(isinstance(v, str) and v for v in vals):
        raise LookalikeError(f"filter 'labels' needs a label or a non-empty list of labels, got {val!r}")
    return vals


def rank_items(
    index: ItemIndex,
    query: ItemQuery,
    k: int = 10,
    mode: str = "hybrid",
    alpha: float = 0.2,
    normalisation: str = "minmax",
    filters: dict | None = None,
    depth: int = 100,
) -> list[ItemHit]:
    """The top-k items for a query; see the module docstring. Items written to the store but not yet in the
    index (a write in progress) are left out until the writer has updated both."""
    from lookalike.retrieval.fusion import fuse
    from lookalike.retrieval.topk import topk_row

    if mode not in MODES:
        raise LookalikeError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if normalisation not in ("minmax", "zscore"):
        raise LookalikeError(f"normalisation must be minmax or zscore, got {normalisation!r}")
    if not 0 <= alpha <= 1:
        raise LookalikeError(f"alpha must be in [0, 1], got {alpha}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LookalikeError(f"k must be a positive integer, got {k!r}")
    labels = check_filters(filters)
    uses_dense, uses_bm25 = mode != "bm25", mode != "dense"
    if uses_dense and query.vector is None:
        raise LookalikeError(f"mode {mode!r} needs a query vector")
    depth = max(k, depth) if mode in ("hybrid", "rrf") else k

    runs: list[list[tuple[str, float]]] = []
    bm25_all: np.ndarray | None = None
    with index.lock:
        if uses_bm25:
            bm25_all = index.bm25.scores(query.tokens)
            allowed = np.zeros(len(bm25_all), bool)
            if labels is None:
                allowed[:] = True
            else:
                for lab in labels:
                    for i in index.by_label.get(lab, ()):
                        allowed[index.bm25.slot_of(i)] = True  # type: ignore[index]
            if query.exclude is not None and (s := index.bm25.slot_of(query.exclude)) is not None:
                allowed[s] = False
            masked = np.where(allowed & (bm25_all > 0), bm25_all, -np.inf)
            slots, vals = topk_row(masked, depth)
            if len(slots) == depth:  # every item tied with the cut, so the id order below decides among them
                slots = np.flatnonzero(masked >= vals[-1])
            named = [(index.bm25.id_of(int(s)), float(masked[s])) for s in slots]
            runs.append(_by_id_ties([(i, v) for i, v in named if i is not None])[:depth])
    if uses_dense:
        dense_run = index.dense.search(query.vector, depth, labels, query.exclude)  # type: ignore[arg-type]
        runs.insert(0, [(i, s) for i, s in dense_run if i in index.records])

    if mode in ("dense", "bm25"):
        fused = runs[0]
    else:
        pairs = [(r, w) for r, w in zip(runs, [alpha, 1 - alpha] if mode == "hybrid" else [1.0, 1.0]) if r]
        cand = sorted({i for r, _ in pairs for i, _ in r})
        pos = {i: n for n, i in enumerate(cand)}
        as_run = [
            (np.array([[pos[i] for i, _ in r]], np.int64), np.array([[s for _, s in r]], np.float32)) for r, _ in pairs
        ]
        if not pairs:
            fused = []
        else:
            idx, sc = fuse(
                as_run,
                [w for _, w in pairs],
                len(cand),
                k,
                "rrf" if mode == "rrf" else normalisation,  # type: ignore[arg-type]
            )
            fused = [(cand[j], float(s)) for j, s in zip(idx[0], sc[0]) if j >= 0 and np.isfinite(s)]
    fused = _by_id_ties(fused)[:k]  # (fuse and the dense side already break ties by id; BM25's run is sorted)
    return _with_parts(index, query if uses_dense else None, fused, runs if uses_dense else [[], *runs], bm25_all)


def _by_id_ties(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Score descending, then id ascending (the stores' rule; BM25's own cut breaks ties by slot)."""
    return sorted(hits, key=lambda h: (-h[1], h[0]))


def _with_parts(
    index: ItemIndex,
    query: ItemQuery | None,
    hits: list[tuple[str, float]],
    runs: list[list[tuple[str, float]]],
    bm25_all: np.ndarray | None,
) -> list[ItemHit]:
    """Each hit with the parts of the retrievers that ranked (`query` None: no dense part; `bm25_all` None: no
    BM25 part), both exact for every hit."""
    dense_of = dict(runs[0]) if runs and runs[0] else {}
    if query is not None and query.vector is not None:
        missing = [i for i, _ in hits if i not in dense_of]
        for i, v in zip(missing, index.dense.vectors(missing) if missing else []):
            if v is not None:
                dense_of[i] = float(np.asarray(v, np.float32) @ np.asarray(query.vector, np.float32))
    out = []
    with index.lock:
        for i, s in hits:
            slot = index.bm25.slot_of(i)
            bm = None if bm25_all is None or slot is None or slot >= len(bm25_all) else float(bm25_all[slot])
            out.append(ItemHit(i, s, dense_of.get(i), bm, index.get(i)))
    return out
