"""Embedded store: in-process, persisted to one directory, zero set-up.

The whole store is one `.npz` snapshot (vectors, ids, metadata, and the counts with the declaration of
what is counted) rewritten on each write to a temp file and renamed over the old one, so a failed or
interrupted write leaves the store and its counts as they were and readers never see half a write. A
count or version read after another process wrote reads those small members of the new snapshot
alone; the rows are reloaded by the next read that needs them. Rows are kept sorted by id, which makes
"ties broken by id" a plain index tie-break. An advisory file lock plus a stat check let a CLI process
and a server share the directory. Exact search is a matrix product (the ground truth); `index=hnsw` adds a
FAISS HNSW graph built lazily, saved next to the snapshot and rebuilt after writes. With a filter, approximate
search takes whichever path costs less by measured lines (`paths.py`): the filter's rows scanned exactly, or
the graph walked with a beam widened as the filter narrows.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.retrieval.stores.base import (
    Filters,
    StoreCounts,
    StoreItem,
    Tally,
    VectorStore,
    check_items,
    check_queries,
    normalize_filters,
    value_key,
)
from lookalike.retrieval.stores.paths import EXACT, INDEX, INDEX_THEN_EXACT, PathCosts, ShortWalks, filter_key
from lookalike.retrieval.topk import topk, topk_row

SNAPSHOT = "store.npz"
SPACE = "space.json"  # the space the vectors are in (VectorStore.use_space), written once
# Approximate search with a filter: the two paths' costs as `benchmarks/scale.py --parts stores` fitted them
# (see `EmbeddedStore._plan`). FILLED IN FROM THE BENCHMARK.
COSTS = PathCosts(exact_ms=0.052, exact_ms_per_row=0.0001109, index_ms=0.878, index_ms_per_unit=0.0047518)
BEAM_CAP = 4096  # the widest beam a filtered graph walk gets (FAISS's efSearch)


@functools.cache
def _threads():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def exact_search(q: np.ndarray, vecs: np.ndarray, k: int, excluded: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact top-k rows of `vecs` for each query, cut by the one top-k (retrieval/topk.py: ties by row, and
    rows are kept in id order), `excluded` rows left out.

    A few queries use FAISS's SIMD scan on one thread (a matrix-vector product is memory-bound, and
    with parallel requests or other load a multi-threaded scan waits on its slowest thread); its top
    k + margin is exact unless the tie at the k-th score runs past the margin, when the whole row is
    scored instead. Batches use one matrix product."""
    import faiss

    if len(q) > 8 or len(vecs) == 0:
        sims = q @ vecs.T
        sims[:, excluded] = -np.inf
        idx, sc = topk(sims, k)
        return [(i[i >= 0], s[i >= 0]) for i, s in zip(idx, sc)]
    kk = min(len(vecs), k + len(excluded) + 8)
    with _threads().limit(limits=1):
        scores, idx = faiss.knn(q, vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
    out = []
    for qi, (srow, irow) in enumerate(zip(scores, idx)):
        keep = (irow >= 0) & ~np.isin(irow, excluded)
        srow, irow = srow[keep], irow[keep]
        order = np.lexsort((irow, -srow))[:k]
        if kk < len(vecs) and (len(order) < k or scores[qi, -1] >= srow[order[-1]]):
            with _threads().limit(limits=1):
                row = vecs @ q[qi]
            row[excluded] = -np.inf
            out.append(topk_row(row, k))
        else:
            out.append((irow[order].astype(np.int64), srow[order]))
    return out


class EmbeddedStore(VectorStore):
    def __init__(
        self,
        path: str | Path,
        dim: int | None = None,
        index: str = "flat",
        m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 200,
        space: str | None = None,
    ):
        """`space`: the space the caller's vectors are in ("" or "adapter:F"); checked against the one recorded
        with the store, and recorded by the first to give one (see `VectorStore.use_space`)."""
        if index not in ("flat", "hnsw"):
            raise LookalikeError(f"embedded store index must be 'flat' or 'hnsw', got {index!r}")
        self.path = Path(path)
        # ef_search 200: recall@10 0.957 on 1M × 512 at p50 0.81 ms on 2 cores (64: 0.81; benchmarks/scale.py)
        self.index, self.m, self.ef_construction, self.ef_search = index, m, ef_construction, ef_search
        self._lock = threading.RLock()
        self._stat = None
        # (stamp, generation, counts) of what this handle holds, replaced whole, so a count reads it without
        # the lock a reload holds for seconds; and the same of a snapshot another process wrote since
        self._committed: tuple = (None, 0, Tally())
        self._peeked: tuple | None = None
        self._peek_lock = threading.Lock()
        self._hnsw = None
        self._sub: dict = {}
        self._subvecs: dict = {}
        self.path_counts: Counter[str] = Counter()  # how approximate searches ran, per query (`_plan`)
        self.index_path = "cost"  # "cost": filtered search takes the cheaper path; "always": the graph
        self.short_walks = ShortWalks()  # per filter, its walks that ended short of k rows (`_plan`)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LookalikeError(f"cannot create store directory {self.path}: {e}") from None
        self._lockfile = open(self.path / ".lock", "a")  # noqa: SIM115 (held for the handle's life: the flock)
        self._sweep()
        if (self.path / SNAPSHOT).exists():
            self._load()
            if space is not None:  # before the dimension: a space mismatch is the better error
                self.use_space(space)
            if dim is not None and dim != self.dim:
                raise LookalikeError(f"store {self.path} holds {self.dim}-d vectors, asked for {dim}")
        else:
            if dim is None:
                raise LookalikeError(f"store {self.path} is empty: give the vector dimension")
            self.dim = int(dim)
            self._set(np.zeros(0, dtype="<U1"), np.zeros((0, self.dim), np.float32), [], 0, Tally())
            with self._writing():  # record the dimension at once; another handle may have been first
                if self._stat is None:
                    self._commit(self._ids, self._vectors, [], Tally())
            if space is not None:
                self.use_space(space)

    # --- the space of the vectors -------------------------------------------------------------------
    def where(self) -> str:
        return str(self.path)

    def recorded_space(self) -> str | None:
        try:
            return str(json.loads((self.path / SPACE).read_text(encoding="utf-8"))["space"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LookalikeError(f"cannot read {self.path / SPACE}: {e}") from None

    def _record_space(self, label: str) -> None:
        with self._writing():
            if self.recorded_space() is not None:
                return
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".space-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"space": label}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path / SPACE)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    # --- persistence -------------------------------------------------------------------------------
    def _sweep(self) -> None:
        """Remove snapshot temp files a killed writer left; holding the write lock, no live writer has one."""
        with self._lock:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX)
            try:
                for f in self.path.glob(".store-*.npz"):
                    f.unlink(missing_ok=True)
            finally:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)

    def _set(self, ids: np.ndarray, vectors: np.ndarray, meta: list[dict], generation: int, tally: Tally) -> None:
        self._ids, self._vectors, self._meta, self._generation, self._tally = ids, vectors, meta, generation, tally
        self._row = {str(i): r for r, i in enumerate(ids)}
        self._fields = {f for m in meta for f in m}
        self._columns: dict[str, list] = {}
        self._sub = {}
        self._subvecs = {}
        self._hnsw = None

    def _load(self) -> None:
        f = self.path / SNAPSHOT
        try:
            with np.load(f) as z:
                meta = json.loads(z["metadata"].tobytes().decode("utf-8"))
                if "counts" in z.files:
                    tally = Tally.from_json(json.loads(z["counts"].tobytes().decode("utf-8")))
                else:  # a snapshot written before the store kept counts: its size, until a write saves them
                    tally = Tally(size=len(meta))
                self.dim = int(z["dim"])
                self._set(z["ids"], np.ascontiguousarray(z["vectors"], np.float32), meta, int(z["generation"]), tally)
        except (OSError, ValueError, KeyError) as e:
            raise LookalikeError(f"cannot read store snapshot {f}: {e}") from None
        self._stat = self._stamp()
        self._committed = (self._stat, self._generation, self._tally)

    def _stamp(self):
        try:
            s = os.stat(self.path / SNAPSHOT)
        except FileNotFoundError:
            return None
        return (s.st_ino, s.st_mtime_ns, s.st_size)

    def _sync(self) -> None:
        """Pick up a write made by another process (CLI while the server runs)."""
        st = self._stamp()
        if st is not None and st != self._stat:
            self._load()

    def _peek(self) -> tuple[int, Tally]:
        """The committed generation and counts: this handle's own, or, after another process wrote, those of the
        new snapshot read from its two small members alone (a count must not reload a million rows, nor wait
        for a reload under way in another thread)."""
        st = self._stamp()
        stat, gen, tally = self._committed
        if st is None or st == stat:
            return gen, tally
        with self._peek_lock:
            if self._peeked is not None and self._peeked[0] == st:
                return self._peeked[1], self._peeked[2]
            f = self.path / SNAPSHOT
            try:
                with np.load(f) as z:
                    legacy = "counts" not in z.files
                    if not legacy:
                        gen = int(z["generation"])
                        tally = Tally.from_json(json.loads(z["counts"].tobytes().decode("utf-8")))
            except (OSError, ValueError, KeyError) as e:
                raise LookalikeError(f"cannot read store snapshot {f}: {e}") from None
            if legacy:  # written before the store kept counts: the rows tell
                with self._lock:
                    self._sync()
                    return self._generation, self._tally
            self._peeked = (st, gen, tally)
            return gen, tally

    @contextmanager
    def _writing(self):
        with self._lock:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX)
            try:
                self._sync()
                yield
            finally:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)

    def _commit(self, ids: np.ndarray, vectors: np.ndarray, meta: list[dict], tally: Tally) -> None:
        gen = self._generation + 1
        blob = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), np.uint8)
        counts = np.frombuffer(json.dumps(tally.to_json(), ensure_ascii=False).encode("utf-8"), np.uint8)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".store-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    ids=ids,
                    vectors=vectors,
                    metadata=blob,
                    counts=counts,
                    dim=np.int64(self.dim),
                    generation=np.int64(gen),
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / SNAPSHOT)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._set(ids, vectors, meta, gen, tally)
        self._stat = self._stamp()
        self._committed = (self._stat, gen, tally)
        for old in self.path.glob("hnsw-*.faiss"):
            old.unlink(missing_ok=True)

    # --- writes ------------------------------------------------------------------------------------
    def upsert(self, items: Iterable[StoreItem]) -> int:
        new = check_items(items, self.dim)
        if new:
            self._merge([it.id for it in new], np.stack([it.vector for it in new]), [it.metadata for it in new])
        return len(new)

    def load(self, batches: Iterable[Iterable[StoreItem]], total: int | None = None) -> int:
        """All batches in one snapshot rewrite (a rewrite per batch would copy the whole store each time);
        a crash before the end leaves the store as it was."""
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        meta: list[dict] = []
        for batch in batches:
            new = check_items(batch, self.dim)
            if new:
                ids += [it.id for it in new]
                vecs.append(np.stack([it.vector for it in new]))
                meta += [it.metadata for it in new]
        if not ids:
            return 0
        last = {i: r for r, i in enumerate(ids)}  # a repeated id keeps its last version, as in upsert
        rows = np.fromiter(last.values(), np.int64, len(last))
        self._merge(list(last), np.concatenate(vecs)[rows], [meta[r] for r in rows])
        return len(rows)

    def _merge(self, new_ids: list[str], new_vecs: np.ndarray, new_meta: list[dict]) -> None:
        """Replace or add rows (ids unique) and commit one sorted snapshot."""
        with self._writing():
            added = np.array(new_ids, dtype=str)
            hit = np.isin(self._ids.astype(str), added) if len(self._ids) else np.zeros(0, bool)
            keep = np.flatnonzero(~hit)
            tally = self._tally.copy()  # committed with the rows, or dropped with them
            for r in np.flatnonzero(hit):
                tally.add(self._meta[r], -1)
            for md in new_meta:
                tally.add(md)
            ids = np.concatenate([self._ids[keep].astype(str), added])
            vectors = np.concatenate([self._vectors[keep], new_vecs.astype(np.float32, copy=False)])
            meta = [self._meta[r] for r in keep] + new_meta
            order = np.argsort(ids, kind="stable")
            self._commit(ids[order], np.ascontiguousarray(vectors[order]), [meta[r] for r in order], tally)

    def delete(self, ids: Iterable[str]) -> int:
        gone = set(ids)
        with self._writing():
            hit = np.fromiter((str(i) in gone for i in self._ids), bool, len(self._ids))
            keep = np.flatnonzero(~hit)
            n = int(hit.sum())
            if n:
                tally = self._tally.copy()
                for r in np.flatnonzero(hit):
                    tally.add(self._meta[r], -1)
                meta = [self._meta[r] for r in keep]
                self._commit(self._ids[keep], np.ascontiguousarray(self._vectors[keep]), meta, tally)
        return n

    def count_by(self, fields: Iterable[str] = (), flag: str | None = None) -> StoreCounts:
        fields = list(fields)
        gen, tally = self._peek()
        if tally.covers(fields, flag):
            return tally.counts(gen)
        with self._writing():
            if not self._tally.covers(fields, flag):
                tally = self._tally.widened(fields, flag)
                for md in self._meta:
                    tally.add(md)
                self._commit(self._ids, self._vectors, self._meta, tally)
            return self._tally.counts(self._generation)

    # --- reads -------------------------------------------------------------------------------------
    def get(self, id: str) -> StoreItem | None:
        with self._lock:
            self._sync()
            r = self._row.get(id)
            return None if r is None else StoreItem(id, self._vectors[r].copy(), dict(self._meta[r]))

    def get_many(self, ids: list[str]) -> list[StoreItem | None]:
        """One lock and one freshness check for all of them (a ranked list's candidates are read at once)."""
        with self._lock:
            self._sync()
            rows = [self._row.get(i) for i in ids]
            return [
                None if r is None else StoreItem(i, self._vectors[r].copy(), dict(self._meta[r]))
                for i, r in zip(ids, rows)
            ]

    def version(self) -> int:
        return self._peek()[0]

    def counts(self) -> StoreCounts:
        gen, tally = self._peek()
        return tally.counts(gen)

    def ids(self, offset: int = 0, limit: int | None = None) -> list[str]:
        with self._lock:
            self._sync()
            return [str(i) for i in self._ids[offset : None if limit is None else offset + limit]]

    def fields(self) -> set[str]:
        with self._lock:
            self._sync()
            return set(self._fields)

    def items(self) -> tuple[list[str], np.ndarray, list[dict]]:
        with self._lock:
            self._sync()
            return [str(i) for i in self._ids], self._vectors.copy(), [dict(m) for m in self._meta]

    def _mask(self, filters: dict[str, list]) -> np.ndarray:
        mask = np.ones(len(self._ids), bool)
        for f, vals in filters.items():
            want = {value_key(v) for v in vals}
            col = self._columns.get(f)
            if col is None:
                col = self._columns[f] = [
                    None if v is None else ({value_key(x) for x in v} if isinstance(v, list) else {value_key(v)})
                    for v in (m.get(f) for m in self._meta)
                ]
            mask &= np.fromiter((c is not None and not c.isdisjoint(want) for c in col), bool, len(col))
        return mask

    def _passing(self, filters: dict[str, list]) -> np.ndarray | None:
        """Row indices passing the filters, cached until the next write; None = all rows."""
        if not filters:
            return None
        key = filter_key(filters)
        if key not in self._sub:
            if len(self._sub) >= 16:
                self._sub.clear()
            self._sub[key] = np.flatnonzero(self._mask(filters))
        return self._sub[key]

    def _passing_vectors(self, filters: dict[str, list]) -> np.ndarray:
        """The vectors of the rows passing the filters, contiguous for the exact scan; cached until the next
        write, at most as many rows in all as the store holds (a filter's rows are ranked exactly when few)."""
        key = filter_key(filters)
        if key not in self._subvecs:
            rows = self._passing(filters)
            if rows is None:  # no filter: the store's own matrix
                return self._vectors
            if sum(len(v) for v in self._subvecs.values()) + len(rows) > len(self._ids):
                self._subvecs.clear()
            self._subvecs[key] = np.ascontiguousarray(self._vectors[rows])
        return self._subvecs[key]

    def _plan(self, flt: dict[str, list], passing: int, k: int) -> str:
        """How an approximate search whose filters pass `passing` rows runs: `exact` or `index`, whichever
        `COSTS` says is cheaper, the walk priced with the share of this filter's walks that ended short (each
        then also ranked exactly). The graph walk widens its beam (its cost) by rows / passing, up to BEAM_CAP;
        `index_path = "always"` skips the choice (the benchmark measures both paths that way)."""
        if self.index_path == "always":
            return INDEX
        units = self._index_units(passing, len(self._ids), k)
        return COSTS.choose(passing, units, self.short_walks.share(filter_key(flt)))

    def _index_units(self, allowed: float, total: float, k: int) -> int:
        """The walk's beam (FAISS's efSearch), its work: a selective filter leaves few allowed nodes on the
        graph's paths, so the beam widens in proportion, up to BEAM_CAP."""
        return int(min(max(self.ef_search, k) * total / max(allowed, 1), BEAM_CAP))

    def _graph(self):
        import faiss

        if self._hnsw is None:
            f = self.path / f"hnsw-{self._generation}-{self.m}-{self.ef_construction}.faiss"
            if f.exists():
                self._hnsw = faiss.read_index(str(f))
            else:
                idx = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
                idx.hnsw.efConstruction = self.ef_construction
                idx.add(self._vectors)
                fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".hnsw-", suffix=".faiss")
                os.close(fd)
                faiss.write_index(idx, tmp)
                os.replace(tmp, f)
                self._hnsw = idx
        return self._hnsw

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: Filters | None = None,
        exact: bool = True,
        exclude_ids: list[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        q = check_queries(queries, self.dim, k)
        with self._lock:
            self._sync()
            flt = normalize_filters(filters, self._fields)
            excluded = [self._row[i] for i in (exclude_ids or []) if i in self._row]
            rows = self._passing(flt)
            if exact or self.index != "hnsw" or not len(self._ids):
                return self._search_exact(q, k, flt, rows, excluded)
            path = INDEX if rows is None else self._plan(flt, len(rows), k)
            if path == EXACT:
                self.path_counts[EXACT] += len(q)
                return self._search_exact(q, k, flt, rows, excluded)
            hits = self._search_hnsw(q, k, rows, excluded)
            # A filtered walk whose beam met fewer than k allowed rows: those queries are ranked exactly instead,
            # so their answers are whole.
            short = [i for i, h in enumerate(hits) if len(h) < k] if rows is not None else []
            if rows is not None and self.index_path != "always":
                self.short_walks.add(filter_key(flt), len(q), len(short))
            if short:
                for i, h in zip(short, self._search_exact(q[short], k, flt, rows, excluded)):
                    hits[i] = h
                self.path_counts[INDEX_THEN_EXACT] += len(short)
            if len(q) > len(short):
                self.path_counts[INDEX] += len(q) - len(short)
            return hits

    def _search_exact(
        self, q: np.ndarray, k: int, flt: dict[str, list], rows: np.ndarray | None, excluded: list[int]
    ) -> list[list[tuple[str, float]]]:
        """Every row that passes, scored: the ground truth."""
        rows, vecs = (np.arange(len(self._ids)), self._vectors) if rows is None else (rows, self._passing_vectors(flt))
        skip = np.flatnonzero(np.isin(rows, excluded)) if excluded else np.zeros(0, np.int64)
        return [
            [(str(self._ids[rows[j]]), float(s)) for j, s in zip(idx, sc)] for idx, sc in exact_search(q, vecs, k, skip)
        ]

    def _search_hnsw(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None, excluded: list[int]
    ) -> list[list[tuple[str, float]]]:
        """`allowed`: the rows the filters let through (cached per filter), None = all."""
        import faiss

        graph = self._graph()
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # (SWIG class missing from stubs)
        params.efSearch = max(self.ef_search, k)
        if allowed is not None or excluded:
            mask = np.zeros(len(self._ids), bool) if allowed is not None else np.ones(len(self._ids), bool)
            if allowed is not None:
                mask[allowed] = True
            mask[excluded] = False
            bitmap = np.packbits(mask, bitorder="little")  # a bit per row: O(n/8) to build, O(1) a lookup
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))  # kept alive while searching
            params.sel = selector
            params.efSearch = self._index_units(int(mask.sum()), len(mask), k)
        scores, idx = graph.search(q, min(k, len(self._ids)), params=params)
        out = []
        for srow, irow in zip(scores, idx):
            hits = sorted(
                ((float(s), str(self._ids[i])) for s, i in zip(srow, irow) if i >= 0), key=lambda h: (-h[0], h[1])
            )
            out.append([(i, s) for s, i in hits])
        return out

    def close(self) -> None:
        self._lockfile.close()
