"""Scale benchmark: prints the figures of issue 13 in one run on this machine.

    python benchmarks/scale.py [--parts embedding,stores,memory,kpi] [--n 1000000] [--work runs/scale]

1. embedding: images/s of the local engine and of Ray Data at equal cores, and Ray at 1 vs 2 CPUs, on the
   same real fashion-products images with a cold embedding cache each time (page cache warmed first; local
   and Ray alternate for --rounds rounds); then a labelled projection of hours for 1M and 10M images per CPU core.
2. stores: N synthetic clustered unit vectors (512-d) plus the real 39,653 fashion-products image vectors
   (EfficientNet-Lite0 features, PCA-512), bulk-loaded into pgvector (COPY binary, one transaction per
   batch, HNSW built after the load) and into the embedded store (one snapshot, FAISS HNSW): load and
   build time, recall@10 against exact search (FAISS flat, the ground truth), p50/p95 single-query latency
   without and with a metadata filter (is_new; one category), memory and disk; and a selectivity sweep
   (filters passing 0.1% … 100% of rows, independent of the vectors or passing whole clusters): the path each
   store chose, recall@10, p50/p95, both paths forced, and the cost lines fitted to them (the stores' `COSTS`).
   `--reuse --measure sweep --markdown` searches stores an earlier run built and prints the sweep as a table.
3. memory: peak RSS of the whole-catalogue computations at N products — centrality, hubness offsets,
   evaluation's exact ranking and top10_to_new — each in its own process, so each peak is its own.
4. kpi: `lookalike serve` on each N-product store (the stores part's, or built here), as Prometheus would
   scrape it: p50/p95 of GET /metrics and GET /api/kpi right after a write by another process (each
   write flips one product's is_new, and every answer is checked to count it), against the same without
   writes; when the background statistics are first ready and how long they lag the last write.
   The served checkpoint is --model, or a small one trained here (the KPI path does not depend on it).
5. adapter (`--parts adapter --dims 512,128`): S2's compact stored vector. The 512-d stores an earlier
   `--parts stores` run built in `--base` (default WORK) are searched as they are; the same N + 39,653 vectors are
   mapped to 128-d and loaded into new stores under WORK/compact-128 (built once, reused after; the 512-d ones are
   built in WORK too when --base is not given). Each store prints its memory (pgvector: table + HNSW sizes, what
   the server must keep in buffers; embedded: the RSS growth of a fresh process opening it, and its disk),
   p50/p95 of unfiltered single-query HNSW search, and recall@10 against the exact 512-d top 10 (all queries,
   and the fifth near real products), beside the 128-d exact top 10's own recall (what the map loses before any
   index) and the index's recall against exact 128-d search.
   The map is labelled in every line it prints: the synthetic vectors are not images, so a trained adapter
   (lookalike train-adapter, fitted on a checkpoint's space) means nothing on them, and the benchmark's real
   vectors are a PCA of the raw features, not a checkpoint's space. It is the adapter at initialisation:
   `Adapter(512, 128).init_pca`, PCA-128 fitted on 100,000 stored vectors (`--map pca`).
Figures are also written to WORK/scale.json with the arguments, seed and package versions.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import Machine, Stopwatch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT.parent / "shared" / "data" / "fashion-products"
DIM = 512


def log(msg: str) -> None:
    print(msg, flush=True)


def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


def _status_gib(key: str) -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(key))
    return round(kb / 2**20, 2)


def rss_gib() -> float:
    return _status_gib("VmRSS:")


def peak_rss_gib() -> float:
    """This process's own high-water mark (VmHWM restarts at exec; a child's ru_maxrss includes its parent's)."""
    return _status_gib("VmHWM:")


def du_gib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30, 2)


def recall(approx: list[list], exact: list[np.ndarray], d: dict, q: np.ndarray) -> float:
    """Recall@k against the exact top k, ties counted: a returned row scoring at least the exact k-th score (a
    duplicate of a true neighbour: the real catalogue has identical images) is a right answer, whichever of the
    tied rows each side kept. Both sides' scores are recomputed here in float64 (the stores rank in float32, so
    scores within 1e-6 of the k-th count as tied)."""
    assert len(approx) == len(exact) == len(q), (len(approx), len(exact), len(q))
    if "row_of" not in d:
        d["row_of"] = {i: r for r, i in enumerate(d["ids"].tolist())}
    row_of, x = d["row_of"], d["vectors"]

    def scores(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (x[rows].astype(np.float64) * v.astype(np.float64)).sum(axis=1)

    out = []
    for a, e, v in zip(approx, exact, q):
        got = np.array([row_of[i] for i, _ in a], np.int64)
        kth = scores(e, v).min() if len(e) else np.inf
        out.append(float(np.sum(scores(got, v) >= kth - 1e-6)) / len(e) if len(e) else 1.0)
    return float(np.mean(out))


# --- data ------------------------------------------------------------------------------------------
def real_vectors(cache_dir: str | None) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """The real catalogue's frozen image vectors in the 512-d space the towers follow (PCA fitted on them)."""
    from lookalike.catalogue import load_catalogue
    from lookalike.config import RunConfig
    from lookalike.encoders.embedding import embed_catalogue
    from lookalike.encoders.projection import ImageSpace
    from lookalike.recommend.newness import NewRule

    cfg = RunConfig.model_validate({"data": {"catalog": str(CATALOG)}, "encoder": {"cache_dir": cache_dir}})
    emb = embed_catalogue(load_catalogue(cfg.data.catalog), cfg, progress=False, texts=False)
    x = ImageSpace("pca", DIM).fit(emb.features).transform(emb.features)
    ps = emb.products
    rule = NewRule.parse("year>=2016")  # the service's default rule
    new = np.array([rule.is_new(p) for p in ps])
    return x, [p.id for p in ps], new, [p.value("articleType") or "" for p in ps]


def synthetic(n: int, seed: int, clusters: int = 2000, subspace: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` random centres, varying along a shared 32-d subspace (as styles, poses and
    backgrounds do) plus isotropic noise; each one's cluster. At 40k vectors these settings match the real
    catalogue's neighbour statistics (mean cosine of a query's 10th neighbour 0.480 vs 0.491 real, HNSW
    m=16 recall@10 0.997 for both), so the 1M figures are not made easy or hard by the generator."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM), dtype=np.float32) / np.sqrt(DIM)
    basis = np.linalg.qr(rng.standard_normal((DIM, subspace)))[0].T.astype(np.float32) / np.sqrt(subspace)
    label = rng.integers(0, clusters, n)
    x = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = (
            centres[label[s:e]]
            + 0.6 * rng.standard_normal((e - s, subspace), dtype=np.float32) @ basis
            + 0.2 / np.sqrt(DIM) * rng.standard_normal((e - s, DIM), dtype=np.float32)
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, label


# The selectivity sweep's filter levels: the share of rows each filter value passes.
LEVELS = (0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def level_name(s: float) -> str:
    return f"{100 * s:g}%"


def nested_tags(u: np.ndarray) -> np.ndarray:
    """Each row's sweep values: a row with draw u is in every level above u (nested sets, so a filter on
    level s passes a share s of the rows); one bit per level (the metadata's list is built per batch)."""
    return np.stack([u < s for s in LEVELS], axis=1)


def dataset(n: int, seed: int, work: Path, cache_dir: str | None) -> dict:
    """N synthetic + the real catalogue, saved once under WORK (vectors.npy, meta.npz) and reused.

    Metadata: `is_new` (20% of synthetic rows at random; the real products by the service's rule), `category`
    (the synthetic cluster mod 50, ~2% each, so a category is 40 clusters: correlated with the vectors; the real
    articleType) and, for the selectivity sweep, two list fields with one value per level in `LEVELS`:
    `uniform` (each row drawn independently of its vector) and `clustered` (each synthetic cluster, and each real
    articleType, drawn as a whole: the filter passes whole neighbourhoods, as a brand or a category does)."""
    f, m = work / "vectors.npy", work / "meta.npz"
    if f.exists() and m.exists():
        with np.load(m, allow_pickle=False) as z:
            meta = {k: z[k] for k in z.files}
        if int(meta["n_synthetic"]) == n and "uniform" in meta:
            return {"vectors": np.load(f), **meta}
    rx, rids, rnew, rcat = real_vectors(cache_dir)
    sx, label = synthetic(n, seed)
    rng = np.random.default_rng(seed + 1)
    cats = np.array([f"cat-{c % 50:02d}" for c in label] + rcat)
    ids = np.array([f"s{i:08d}" for i in range(n)] + [f"r{i}" for i in rids])
    is_new = np.concatenate([rng.random(n) < 0.2, rnew])
    group = np.concatenate([label, int(label.max()) + 1 + np.unique(np.array(rcat), return_inverse=True)[1]])
    meta = {
        "ids": ids,
        "is_new": is_new,
        "category": cats,
        "uniform": nested_tags(rng.random(len(ids))),
        "clustered": nested_tags(rng.random(int(group.max()) + 1)[group]),
        "n_synthetic": np.int64(n),
        "n_real": np.int64(len(rids)),
    }
    vectors = np.concatenate([sx, rx])
    del sx
    work.mkdir(parents=True, exist_ok=True)
    np.save(f, vectors)
    np.savez(m, **meta)
    return {"vectors": vectors, **meta}


def queries(d: dict, n: int, seed: int) -> np.ndarray:
    """Fresh draws near stored vectors (80% synthetic, 20% real), none of them stored themselves."""
    rng = np.random.default_rng(seed + 2)
    ns, nr = int(d["n_synthetic"]), int(d["n_real"])
    rows = np.concatenate([rng.integers(0, ns, n - n // 5), ns + rng.integers(0, nr, n // 5)])
    q = d["vectors"][rows] + 0.05 * rng.standard_normal((n, DIM), dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def batches(d: dict, size: int = 10_000):
    from lookalike.retrieval.stores import StoreItem

    ids, x, new, cat = d["ids"], d["vectors"], d["is_new"], d["category"]
    names = [level_name(s) for s in LEVELS]

    def tags(bits: np.ndarray) -> list[str]:
        return [names[j] for j in np.flatnonzero(bits)]

    for s in range(0, len(ids), size):
        yield [
            StoreItem(
                str(ids[i]),
                x[i],
                {
                    "is_new": bool(new[i]),
                    "category": str(cat[i]),
                    "uniform": tags(d["uniform"][i]),
                    "clustered": tags(d["clustered"][i]),
                },
            )
            for i in range(s, min(len(ids), s + size))
        ]


def ground_truth(d: dict, q: np.ndarray, k: int, mask: np.ndarray | None) -> list[np.ndarray]:
    """Exact top-k rows (FAISS flat inner product over the rows the filter lets through)."""
    import faiss

    rows = np.arange(len(d["ids"])) if mask is None else np.flatnonzero(mask)
    x = d["vectors"] if mask is None else np.ascontiguousarray(d["vectors"][rows])
    _, idx = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return [rows[r] for r in idx]


# --- part 2: stores --------------------------------------------------------------------------------
def bench_store(name: str, store, d: dict, q: np.ndarray, k: int, exact_n: int, category: str) -> dict:
    """Recall@k of approximate search against the exact ground truth, and single-query latency after a
    warm-up pass (steady state), for no filter and two filters; exact search's latency on a few queries."""
    flts = {"none": None, "is_new": {"is_new": True}, "category": {"category": category}}
    masks = {"none": None, "is_new": d["is_new"].astype(bool), "category": d["category"] == category}
    out: dict = {}
    for fname, flt in flts.items():
        truth = ground_truth(d, q, k, masks[fname])
        for v in q[:100]:
            store.search(v, k, flt, exact=False)
        ms, got = [], []
        for v in q:
            t = time.perf_counter()
            got.append(store.search(v, k, flt, exact=False)[0])
            ms.append((time.perf_counter() - t) * 1000)
        exact_ms = []
        for v in q[:exact_n]:
            t = time.perf_counter()
            store.search(v, k, flt)
            exact_ms.append((time.perf_counter() - t) * 1000)
        r = out[fname] = {
            "recall@10": round(recall(got, truth, d, q), 4),
            **pct(ms),
            "exact": pct(exact_ms),
            "rows_passing": int(len(d["ids"]) if masks[fname] is None else masks[fname].sum()),
        }
        log(
            f"  {name:<9} filter {fname:<8} ({r['rows_passing']:>9,} rows pass): HNSW recall@10 {r['recall@10']:.4f}, "
            f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms; exact search p50 {r['exact']['p50_ms']:.1f} ms "
            f"({exact_n} queries)"
        )
    return out


def ef_sweep(name: str, store, d: dict, q: np.ndarray, k: int, values: list[int]) -> dict:
    """Recall@k and p50 latency of unfiltered HNSW search as ef_search varies (the operator's dial)."""
    truth = ground_truth(d, q, k, None)
    default, out = store.ef_search, {}
    for ef in values:
        store.ef_search = ef
        ms, got = [], []
        for v in q:
            t = time.perf_counter()
            got.append(store.search(v, k, exact=False)[0])
            ms.append((time.perf_counter() - t) * 1000)
        out[ef] = {"recall@10": round(recall(got, truth, d, q), 4), **pct(ms)}
    store.ef_search = default
    log(
        f"  {name:<9} ef_search sweep, no filter: "
        + "; ".join(f"{ef}: recall {r['recall@10']:.4f}, p50 {r['p50_ms']:.2f} ms" for ef, r in out.items())
    )
    return out


def timed(fn, q: np.ndarray) -> tuple[list[float], list]:
    ms, got = [], []
    for v in q:
        t = time.perf_counter()
        got.append(fn(v))
        ms.append((time.perf_counter() - t) * 1000)
    return ms, got


def load_line() -> str:
    import faiss

    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} cores, FAISS threads {faiss.omp_get_max_threads()}, load average {one:.2f} / {five:.2f}"


def sweep(name: str, store, d: dict, q: np.ndarray, k: int, path_queries: int) -> dict:
    """Filtered approximate search at each selectivity in LEVELS, for filters independent of the vectors
    (`uniform`) and filters passing whole clusters (`clustered`): rows passing, the path the store chose
    (share of queries), recall@k against exact and p50/p95 over all queries; then, on `path_queries` of them
    spread over the set, each path forced (exact; the index walk), whose p50 against the work the path does is what the
    store's cost lines (`COSTS`) are fitted to (`fit_costs`)."""
    from lookalike.retrieval.stores.paths import INDEX

    n, out = len(d["ids"]), {"levels": [], "load_before": load_line()}
    log(f"  {name} selectivity sweep ({len(q)} queries; forced paths on {path_queries}); {out['load_before']}")
    for fam in ("uniform", "clustered"):
        for j, s in enumerate(LEVELS):
            flt, mask = {fam: level_name(s)}, d[fam][:, j]
            passing = int(mask.sum())
            truth = ground_truth(d, q, k, mask)
            for v in q[:20]:  # warm-up: the filter's caches, the pages its rows sit on
                store.search(v, k, flt, exact=False)
            store.path_counts.clear()
            store.short_walks.clear()  # what the store learns of the filter's walks, it learns on the queries timed
            ms, got = timed(lambda v, f=flt: store.search(v, k, f, exact=False)[0], q)
            paths = {p: round(c / len(q), 3) for p, c in sorted(store.path_counts.items())}
            picked = np.arange(len(q))[:: max(1, len(q) // path_queries)][:path_queries]  # real queries too
            sub, sub_truth = q[picked], [truth[i] for i in picked]
            ex_ms, ex_got = timed(lambda v, f=flt: store.search(v, k, f)[0], sub)
            store.index_path = "always"
            store.path_counts.clear()
            ix_ms, ix_got = timed(lambda v, f=flt: store.search(v, k, f, exact=False)[0], sub)
            ix_paths = dict(store.path_counts)
            store.index_path = "cost"
            r = {
                "family": fam,
                "level": level_name(s),
                "rows_passing": passing,
                "rows_estimated": store._estimated_rows({fam: [level_name(s)]})[0] if name == "pgvector" else passing,
                "path": paths,
                "recall@10": round(recall(got, truth, d, q), 4),
                **pct(ms),
                "exact": {**pct(ex_ms), "recall@10": round(recall(ex_got, sub_truth, d, sub), 4)},
                "index": {
                    **pct(ix_ms),
                    "recall@10": round(recall(ix_got, sub_truth, d, sub), 4),
                    "units": store._index_units(passing, n, k),
                    "ran_out": round(1 - ix_paths.get(INDEX, 0) / len(sub), 3),  # share ranked exactly after all
                },
            }
            out["levels"].append(r)
            chosen = ", ".join(f"{p} {c:.0%}" for p, c in paths.items())
            log(
                f"  {name:<9} {fam:<9} {r['level']:>5} ({passing:>9,} rows, {r['rows_estimated']:>9,.0f} estimated): "
                f"{chosen:<22} recall@10 "
                f"{r['recall@10']:.4f}, p50 {r['p50_ms']:7.2f} ms, p95 {r['p95_ms']:7.2f} ms | forced exact p50 "
                f"{r['exact']['p50_ms']:7.2f} ms (recall {r['exact']['recall@10']:.3f}); forced {INDEX} p50 "
                f"{r['index']['p50_ms']:7.2f} ms, recall {r['index']['recall@10']:.4f}, "
                f"{r['index']['units']:,.0f} units, ran out {r['index']['ran_out']:.0%}"
            )
            assert r["exact"]["recall@10"] == 1.0, f"{name}: exact search is not exact ({fam} {r['level']})"
    out["load_after"] = load_line()
    out["fit"] = fit_costs(out["levels"])
    f = out["fit"]
    log(
        f"  {name} cost lines fitted to the forced paths' p50 (relative least squares): exact {f['exact_ms']:.3f} ms "
        f"+ {f['exact_ms_per_row'] * 1000:.3f} µs a row passing; index {f['index_ms']:.3f} ms + "
        f"{f['index_ms_per_unit'] * 1000:.3f} µs a unit (fitted on {f['index_points']} uniform levels); "
        f"{out['load_after']}"
    )
    return out


def fit_cost_line(x: list[float], y: list[float]) -> tuple[float, float]:
    """y ≈ a + b·x minimizing relative error (each point weighted 1/y), a and b ≥ 0."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = 1 / y
    (a, b), *_ = np.linalg.lstsq(np.stack([w, w * x], axis=1), np.ones_like(y), rcond=None)
    if a < 0:  # no fixed cost: the best line through the origin
        a, b = 0.0, float(np.sum(w * x) / np.sum(w * w * x * x))
    return float(a), max(float(b), 0.0)


def fit_costs(levels: list[dict]) -> dict:
    """The cost lines (`PathCosts`) through the forced paths' p50: exact against rows passing (every level),
    the index walk against its units of work, on the filters its model of work describes (`uniform`: independent
    of the vectors) where it never ran out (a walk that ran out also paid for an exact ranking)."""
    ea, eb = fit_cost_line([r["rows_passing"] for r in levels], [r["exact"]["p50_ms"] for r in levels])
    ok = [r for r in levels if r["family"] == "uniform" and r["index"]["ran_out"] == 0]
    ia, ib = fit_cost_line([r["index"]["units"] for r in ok], [r["index"]["p50_ms"] for r in ok]) if ok else (0.0, 0.0)
    return {
        "exact_ms": round(ea, 3),
        "exact_ms_per_row": round(eb, 7),
        "index_ms": round(ia, 3),
        "index_ms_per_unit": round(ib, 7),
        "index_points": len(ok),
    }


def sweep_markdown(res: dict) -> str:
    """The sweep as a table to paste (README, Scale)."""
    lines = [
        "| store | filter | passes | rows | path chosen | recall@10 | p50 / p95 ms | forced exact p50 ms | "
        "forced index p50 ms (recall@10) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("pgvector", "embedded"):
        if name not in res or "sweep" not in res[name]:
            continue
        for r in res[name]["sweep"]["levels"]:
            chosen = ", ".join(f"{p} {c:.0%}" if c < 1 else p for p, c in r["path"].items())
            lines.append(
                f"| {name} | {r['family']} | {r['level']} | {r['rows_passing']:,} | {chosen} | {r['recall@10']:.3f} | "
                f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} | {r['exact']['p50_ms']:.1f} | "
                f"{r['index']['p50_ms']:.1f} ({r['index']['recall@10']:.3f}) |"
            )
    return "\n".join(lines)


def neighbour_stats(d: dict, q: np.ndarray, k: int = 10) -> dict:
    """Mean cosine of a query's 1st and 10th neighbour, synthetic vs real queries (see `synthetic`)."""
    import faiss

    D, _ = faiss.knn(q, d["vectors"], k, metric=faiss.METRIC_INNER_PRODUCT)
    real = np.arange(len(q)) >= len(q) - len(q) // 5
    return {
        kind: {"top1": round(float(D[m, 0].mean()), 3), "top10": round(float(D[m, k - 1].mean()), 3)}
        for kind, m in (("synthetic", ~real), ("real", real))
    }


def part_stores(args, d: dict) -> dict:
    n = len(d["ids"])
    q = queries(d, args.queries, args.seed)
    cats, counts = np.unique(d["category"][: int(d["n_synthetic"])], return_counts=True)
    category = str(cats[np.argmin(np.abs(counts - np.median(counts)))])  # a typical ~2% category
    res: dict = {
        "n_vectors": n,
        "dim": DIM,
        "queries": len(q),
        "category_filter": category,
        "neighbours": neighbour_stats(d, q),
    }
    log(
        f"queries: {len(q)} ({len(q) // 5} near real products); mean cosine of the 1st / 10th exact neighbour: "
        + ", ".join(f"{kind} {v['top1']} / {v['top10']}" for kind, v in res["neighbours"].items())
    )

    if "pgvector" in args.stores.split(","):
        res["pgvector"] = store_pgvector(args, d, q, category)
    if "embedded" in args.stores.split(","):
        res["embedded"] = store_embedded(args, d, q, category)
    return res


def measure(args, name: str, store, d: dict, q: np.ndarray, category: str, r: dict) -> None:
    """The searches `--measure` names, into r."""
    what = args.measure.split(",")
    if "filters" in what:
        r["search"] = bench_store(name, store, d, q, 10, args.exact_queries, category)
    if "ef" in what:
        r["ef_search_sweep"] = ef_sweep(name, store, d, q, 10, [40, 100, 200, 400])
    if "sweep" in what:
        r["sweep"] = sweep(name, store, d, q, 10, args.path_queries)


def warm_pgvector(pg, d: dict) -> dict:
    """A server that has been serving has the table and the HNSW graph in its buffers; this benchmark's server
    starts cold (pgserver starts it with the process), and a plain scan of a large table reads through a small
    ring, not into shared_buffers. One iterative HNSW scan of the whole graph, from a stored row (not a timed
    query), reads every index page and, fetching every row, every table page."""
    conn = pg._conn()
    t = time.perf_counter()
    with conn.transaction():
        conn.execute(
            "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.max_scan_tuples', "
            "%(n)s, true), set_config('hnsw.scan_mem_multiplier', '1000', true), set_config('enable_seqscan', "
            "'off', true)",
            {"n": str(2 * len(d["ids"]))},
        )
        seen = conn.execute(
            "SELECT count(*) FROM (SELECT id FROM scale ORDER BY embedding <#> %(q)s LIMIT %(n)s) s",
            {"q": d["vectors"][0], "n": 2 * len(d["ids"])},
        ).fetchone()[0]
    out = {"rows_seen": seen, "seconds": round(time.perf_counter() - t, 1)}
    log(f"pgvector: warmed up: one walk over the whole graph read every page ({seen:,} rows) in {out['seconds']} s")
    return out


def store_pgvector(args, d: dict, q: np.ndarray, category: str) -> dict:
    from lookalike.retrieval.stores import open_store

    n = len(d["ids"])
    ef = f"&ef_search={args.ef_search}" if args.ef_search else ""  # else each store's default
    pgdir = Path(args.work) / "pgdata"
    url = (
        f"pgserver://{pgdir}?table=scale&maintenance_work_mem={args.maintenance_work_mem}"
        f"&build_workers={args.build_workers}&m=16&ef_construction=64{ef}"
    )
    if args.reuse and pgdir.exists():
        pg = open_store(url)
        assert len(pg) == n, f"{pgdir} holds {len(pg)} rows, not {n}: run without --reuse"
        r = {"reused": True}
        log(f"pgvector: reusing the {n:,} rows and indexes built by an earlier run in {pgdir}")
    else:
        shutil.rmtree(pgdir, ignore_errors=True)
        pg = open_store(url, dim=DIM)
        # As on a real server: shared_buffers sized for the index (pgserver's initdb leaves 128 MB); takes a restart.
        pg._conn().execute(f"ALTER SYSTEM SET shared_buffers = '{args.shared_buffers}'")
        pg.close()
        pg._keepalive.cleanup()
        pg = open_store(url)
        t = time.perf_counter()
        pg.load(batches(d), total=n)
        r = {"load_wall_s": round(time.perf_counter() - t, 1), **pg.last_load}
    sizes = (
        pg._conn()
        .execute("SELECT pg_table_size('scale'), pg_indexes_size('scale'), pg_relation_size('scale_hnsw')")
        .fetchone()
    )
    r.update(
        {
            "table_gib": round(sizes[0] / 2**30, 2),
            "indexes_gib": round(sizes[1] / 2**30, 2),
            "hnsw_gib": round(sizes[2] / 2**30, 2),
            "pgdata_disk_gib": du_gib(pgdir),
            "m": 16,
            "ef_construction": 64,
            "ef_search": pg.ef_search,
            "shared_buffers": pg._conn().execute("SHOW shared_buffers").fetchone()[0],
        }
    )
    if "load_s" in r:
        log(
            f"pgvector: {n:,} rows bulk-loaded in {r['load_s']} s (COPY binary, 10k rows a transaction); HNSW and the "
            f"GIN metadata index built after the load in {r['index_build_s']} s ({args.build_workers} parallel "
            f"workers, maintenance_work_mem {args.maintenance_work_mem})"
        )
    log(
        f"pgvector: table {r['table_gib']} GiB, indexes {r['indexes_gib']} GiB (HNSW {r['hnsw_gib']} GiB), pgdata "
        f"{r['pgdata_disk_gib']} GiB on disk; shared_buffers {r['shared_buffers']}, ef_search {r['ef_search']}"
    )
    r["warm_up"] = warm_pgvector(pg, d)
    measure(args, "pgvector", pg, d, q, category, r)
    pg.close()
    return r


def store_embedded(args, d: dict, q: np.ndarray, category: str) -> dict:
    from lookalike.retrieval.stores import open_store

    n = len(d["ids"])
    ef = f"&ef_search={args.ef_search}" if args.ef_search else ""
    edir = Path(args.work) / "embedded"
    url = f"embedded://{edir}?index=hnsw&m=32&ef_construction=80{ef}"
    before = rss_gib()
    if args.reuse and (edir / "store.npz").exists():
        store = open_store(url)
        assert len(store) == n, f"{edir} holds {len(store)} rows, not {n}: run without --reuse"
        store.search(q[0], 10, exact=False)  # reads the saved graph
        r = {"reused": True}
        log(f"embedded: reusing the {n:,} rows and graph saved by an earlier run in {edir}")
    else:
        shutil.rmtree(edir, ignore_errors=True)
        store = open_store(url, dim=DIM)
        t = time.perf_counter()
        store.load(batches(d), total=n)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        store.search(q[0], 10, exact=False)  # builds the graph and saves it beside the snapshot
        r = {"load_s": round(load_s, 1), "index_build_s": round(time.perf_counter() - t, 1)}
        log(
            f"embedded: {n:,} rows loaded in {r['load_s']} s (one snapshot), FAISS HNSW built in {r['index_build_s']} s"
        )
    r.update(
        {
            "process_rss_gib": rss_gib(),
            "rss_before_gib": before,
            "disk_gib": du_gib(edir),
            "m": 32,
            "ef_construction": 80,
            "ef_search": store.ef_search,
        }
    )
    log(
        f"embedded: process RSS {r['rss_before_gib']} → {r['process_rss_gib']} GiB with the store open (the "
        f"benchmark's own copy of the data is in both), {r['disk_gib']} GiB on disk (snapshot + graph), "
        f"ef_search {r['ef_search']}"
    )
    measure(args, "embedded", store, d, q, category, r)
    store.close()
    return r


# --- part 5: the compact (128-d) stored vector -------------------------------------------------------
MAP_LABEL = "PCA-128 (the adapter at initialisation, untrained; fitted on 100,000 stored vectors)"


def compact_map(d: dict, dim: int, seed: int):
    """The 512 → `dim` map (see the module doc: PCA, the untrained adapter) and its label."""
    from lookalike.towers.adapter import Adapter

    rng = np.random.default_rng(seed + 3)
    sample = d["vectors"][np.sort(rng.choice(len(d["ids"]), min(100_000, len(d["ids"])), replace=False))]
    adapter = Adapter(DIM, dim).init_pca(sample)
    return adapter, MAP_LABEL.replace("128", str(dim))


def compact_data(d: dict, adapter, work: Path) -> dict:
    """The mapped vectors, saved once in `work` (vectors.npy) and reused."""
    f = work / "vectors.npy"
    if f.exists():
        x = np.load(f)
        if x.shape == (len(d["ids"]), adapter.out_dim):
            return {**d, "vectors": x}
    work.mkdir(parents=True, exist_ok=True)
    x = np.concatenate([adapter.encode(d["vectors"][s : s + 100_000]) for s in range(0, len(d["ids"]), 100_000)])
    np.save(f, x)
    return {**d, "vectors": x}


def compact_search(name: str, store, d512: dict, q512: np.ndarray, q: np.ndarray, truth512, truth_own) -> dict:
    """Unfiltered HNSW search (after a warm-up pass): p50/p95, recall@10 against exact 512-d (all queries, the
    real fifth) and, when the store is compact, against exact search in its own space."""
    for v in q[:100]:
        store.search(v, 10, exact=False)
    ms, got = timed(lambda v: store.search(v, 10, exact=False)[0], q)
    real = np.arange(len(q)) >= len(q) - len(q) // 5
    r = {
        **pct(ms),
        "recall@10_vs_exact_512": round(recall(got, truth512, d512, q512), 4),
        "recall@10_vs_exact_512_real": round(
            recall([g for g, m in zip(got, real) if m], [t for t, m in zip(truth512, real) if m], d512, q512[real]), 4
        ),
    }
    if truth_own is not None:
        r["recall@10_vs_exact_own"] = round(recall(got, truth_own[0], truth_own[1], q), 4)
    log(
        f"  {name}: p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms; recall@10 vs exact 512-d "
        f"{r['recall@10_vs_exact_512']:.4f} (real queries {r['recall@10_vs_exact_512_real']:.4f})"
        + (f", vs exact search in its own space {r['recall@10_vs_exact_own']:.4f}" if truth_own is not None else "")
    )
    return r


def pg_sizes(pg, pgdir: Path) -> dict:
    t, i, h = (
        pg._conn()
        .execute("SELECT pg_table_size('scale'), pg_indexes_size('scale'), pg_relation_size('scale_hnsw')")
        .fetchone()
    )
    return {
        "table_gib": round(t / 2**30, 3),
        "indexes_gib": round(i / 2**30, 3),
        "hnsw_gib": round(h / 2**30, 3),
        "table_and_hnsw_gib": round((t + h) / 2**30, 3),
        "pgdata_disk_gib": du_gib(pgdir),
    }


def compact_pgvector(args, d: dict, pgdir: Path, fresh: bool) -> tuple[object, dict]:
    """The pgvector store of `d` in `pgdir`: opened as it is, or (fresh) loaded and indexed here."""
    from lookalike.retrieval.stores import open_store

    url = f"pgserver://{pgdir}?table=scale&maintenance_work_mem={args.maintenance_work_mem}&build_workers=2&m=16"
    r: dict = {}
    if fresh and not pgdir.exists():
        pg = open_store(url + "&ef_construction=64", dim=d["vectors"].shape[1])
        pg._conn().execute(f"ALTER SYSTEM SET shared_buffers = '{args.compact_shared_buffers}'")
        pg.close()
        pg._keepalive.cleanup()
        pg = open_store(url + "&ef_construction=64")
        t = time.perf_counter()
        pg.load(batches(d), total=len(d["ids"]))
        r = {"load_wall_s": round(time.perf_counter() - t, 1), **pg.last_load}
        log(f"  pgvector {d['vectors'].shape[1]}-d: loaded in {r['load_s']} s, HNSW built in {r['index_build_s']} s")
    else:
        pg = open_store(url + "&ef_construction=64")
    assert len(pg) == len(d["ids"]), f"{pgdir} holds {len(pg)} rows, not {len(d['ids'])}"
    r.update(pg_sizes(pg, pgdir))
    r["ef_search"] = pg.ef_search
    r["warm_up"] = warm_pgvector(pg, d)
    return pg, r


STORE_RSS = """
import json, sys, numpy as np
from lookalike.retrieval.stores import open_store
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20
before = rss()
store = open_store(sys.argv[1])
store.search(np.ones(store.dim, np.float32), 10, exact=False)
print(json.dumps({"rss_gib": round(rss() - before, 2)}))
"""


def store_rss(url: str) -> float:
    """What holding the store open costs a process (RSS growth on opening it and reading its graph), measured in a
    fresh process so nothing else this one holds is counted."""
    out = subprocess.run([sys.executable, "-c", STORE_RSS, url], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_gib"]


def compact_embedded(d: dict, edir: Path, fresh: bool, q: np.ndarray) -> tuple[object, dict]:
    """The embedded store of `d` in `edir` (opened, or loaded and its graph built here) and its memory."""
    from lookalike.retrieval.stores import open_store

    url = f"embedded://{edir}?index=hnsw&m=32&ef_construction=80"
    r: dict = {}
    if fresh and not (edir / "store.npz").exists():
        store = open_store(url, dim=d["vectors"].shape[1])
        t = time.perf_counter()
        store.load(batches(d), total=len(d["ids"]))
        r["load_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        store.search(q[0], 10, exact=False)
        r["index_build_s"] = round(time.perf_counter() - t, 1)
        log(f"  embedded {d['vectors'].shape[1]}-d: loaded in {r['load_s']} s, HNSW built in {r['index_build_s']} s")
        store.close()
    r["rss_gib"] = store_rss(url)
    store = open_store(url)
    assert len(store) == len(d["ids"]), f"{edir} holds {len(store)} rows, not {len(d['ids'])}"
    store.search(q[0], 10, exact=False)  # reads the saved graph
    r.update({"disk_gib": du_gib(edir), "ef_search": store.ef_search})
    log(
        f"  embedded {d['vectors'].shape[1]}-d: a process holding it open grows by {r['rss_gib']} GiB; "
        f"{r['disk_gib']} GiB on disk"
    )
    return store, r


def part_adapter(args, d: dict) -> dict:
    import faiss

    dims = [int(x) for x in args.dims.split(",")]
    base, work = Path(args.base or args.work), Path(args.work)
    q512 = queries(d, args.queries, args.seed)
    truth512 = ground_truth(d, q512, 10, None)
    n = len(d["ids"])
    res: dict = {"n_vectors": n, "queries": len(q512), "map": None, "dims": {}}
    log(f"adapter part: {n:,} vectors, {len(q512)} queries (a fifth near real products); 512-d stores from {base}")
    for dim in dims:
        if dim == DIM:
            # the stores a `--parts stores` run built in --base, searched as they are (built here only when --base is
            # this run's own WORK and holds none yet)
            dd, q, own, where, fresh = d, q512, None, base, base.resolve() == work.resolve()
        else:
            adapter, label = compact_map(d, dim, args.seed)
            res["map"] = label
            where, fresh = work / f"compact-{dim}", True
            dd = compact_data(d, adapter, where)
            q = adapter.encode(q512)
            _, idx = faiss.knn(q, dd["vectors"], 10, metric=faiss.METRIC_INNER_PRODUCT)
            own = (list(idx), dd)
            exact_small = recall([[(d["ids"][j], 0.0) for j in r] for r in idx], truth512, d, q512)
            log(f"{dim}-d by {label}: its exact top 10 has recall@10 {exact_small:.4f} against the exact 512-d top 10")
        out: dict = {"vector_bytes_gib": round(n * dim * 4 / 2**30, 3)}
        if dim != DIM:
            out["exact_recall@10_vs_exact_512"] = round(exact_small, 4)
        stores = args.stores.split(",")
        if "embedded" in stores:
            store, r = compact_embedded(dd, where / "embedded", fresh, q)
            r.update(compact_search(f"embedded {dim}-d", store, d, q512, q, truth512, own))
            store.close()
            out["embedded"] = r
        if "pgvector" in stores:
            pg, r = compact_pgvector(args, dd, where / "pgdata", fresh)
            r.update(compact_search(f"pgvector {dim}-d", pg, d, q512, q, truth512, own))
            pg.close()
            if getattr(pg, "_keepalive", None) is not None:
                pg._keepalive.cleanup()  # stops its server (this process is its last holder)
            out["pgvector"] = r
        res["dims"][dim] = out
    return res


def adapter_markdown(res: dict) -> str:
    dims = list(res["dims"])
    head = " | ".join(f"{dim}-d" for dim in dims)
    lines = [f"| {res['n_vectors']:,} vectors | {head} |", "|---|" + "---|" * len(dims)]

    def row(label: str, fn) -> None:
        lines.append(f"| {label} | " + " | ".join(fn(res["dims"][dim]) for dim in dims) + " |")

    row("vectors alone (n × d × 4 bytes)", lambda o: f"{o['vector_bytes_gib']} GiB")
    row(
        "exact top 10: recall@10 vs exact 512-d",
        lambda o: f"{o.get('exact_recall@10_vs_exact_512', 1.0):.4f}",
    )
    for kind in ("embedded", "pgvector"):
        if not all(kind in o for o in res["dims"].values()):
            continue
        if kind == "embedded":
            row(
                "embedded: RSS of a process holding it open / disk",
                lambda o: f"{o['embedded']['rss_gib']} / {o['embedded']['disk_gib']} GiB",
            )
        else:
            row(
                "pgvector: table + HNSW (of which HNSW)",
                lambda o: f"{o['pgvector']['table_and_hnsw_gib']} ({o['pgvector']['hnsw_gib']}) GiB",
            )
        row(
            f"{kind}: p50 / p95 ms (ef_search)",
            lambda o, k=kind: f"{o[k]['p50_ms']} / {o[k]['p95_ms']} ({o[k]['ef_search']})",
        )
        row(
            f"{kind}: recall@10 vs exact 512-d (real queries)",
            lambda o, k=kind: f"{o[k]['recall@10_vs_exact_512']:.4f} ({o[k]['recall@10_vs_exact_512_real']:.4f})",
        )
    return "\n".join(lines) + f"\n\n128-d map: {res['map']}."


# --- part 3: memory --------------------------------------------------------------------------------
def stage(name: str, work: Path, bank: int, eval_queries: int) -> dict:
    """One whole-catalogue computation at full size; runs in its own process (see `part_memory`)."""
    x = np.load(work / "vectors.npy")
    with np.load(work / "meta.npz") as z:
        new = z["is_new"].astype(bool)
    base = rss_gib()
    t = time.perf_counter()
    if name == "centrality":
        from lookalike.evaluation.centrality import anchor_mask, centrality_scores

        anchor_mask(centrality_scores(x))
        what = f"centrality of {len(x):,} vectors + anchor set"
    elif name == "hubness":
        from lookalike.retrieval.hubness import hub_penalty

        rng = np.random.default_rng(5)
        b = x[rng.integers(0, len(x), bank)] + 0.05 * rng.standard_normal((bank, x.shape[1]), dtype=np.float32)
        hub_penalty(x, b / np.linalg.norm(b, axis=1, keepdims=True), 50)
        what = f"hubness offsets of {len(x):,} vectors against a {bank:,}-query bank (k=50)"
    elif name == "evaluation":
        from lookalike.evaluation.metrics import per_query_metrics
        from lookalike.retrieval.exact import exact_topk

        rows = np.random.default_rng(6).choice(len(x), eval_queries, replace=False)
        idx, _ = exact_topk(x[rows], x, 100)
        with np.load(work / "meta.npz") as z:
            keys = np.unique(z["category"], return_inverse=True)[1]
        per_query_metrics(keys[idx] == keys[rows][:, None], np.bincount(keys)[keys[rows]], [1, 5, 10])
        what = f"evaluation ranking (exact top-100 over all {len(x):,}) of {eval_queries:,} queries + metrics"
    elif name == "top10_to_new":
        from lookalike.recommend.recommender import Recommender
        from lookalike.retrieval.stores import open_store

        del x
        store = open_store(f"embedded://{work / 'embedded'}")
        base = rss_gib()
        rec = Recommender(store, "category")
        picked, _ = rec.best_by_centrality(0.1, 20)
        items = store.get_many([i for i, _ in picked])
        rec.top10_to_new([{"id": i} for i, _ in picked], np.stack([it.vector for it in items]), 10, 50)
        what = f"top10_to_new: 20 best sellers by centrality over the {len(store):,}-product embedded store"
    else:
        raise SystemExit(f"unknown stage {name}")
    return {
        "what": what,
        "seconds": round(time.perf_counter() - t, 1),
        "rss_after_load_gib": base,
        "peak_rss_gib": peak_rss_gib(),
        "new_share": round(float(new.mean()), 3),
    }


def part_memory(args) -> dict:
    out = {}
    for name in ("centrality", "hubness", "evaluation", "top10_to_new"):
        if name == "top10_to_new" and not (Path(args.work) / "embedded" / "store.npz").exists():
            log("  top10_to_new: skipped, no embedded store yet (run the stores part first)")
            continue
        res_file = Path(args.work) / f"stage-{name}.json"
        cmd = [
            sys.executable,
            __file__,
            "--stage",
            name,
            "--work",
            args.work,
            "--bank",
            str(args.bank),
            "--eval-queries",
            str(args.eval_queries),
        ]
        with open(res_file, "w") as f:
            rc = subprocess.run(cmd, stdout=f).returncode
        if rc != 0:
            raise SystemExit(f"stage {name} failed (exit {rc})")
        out[name] = r = json.loads(res_file.read_text())
        log(
            f"  {r['what']}: {r['seconds']} s, peak RSS {r['peak_rss_gib']} GiB "
            f"(data alone {r['rss_after_load_gib']} GiB)"
        )
    return out


# --- part 1: embedding -----------------------------------------------------------------------------
def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares wall = fixed + n × per_image over (n, wall) points: (fixed seconds, images/s)."""
    n = np.array([p[0] for p in points], float)
    w = np.array([p[1] for p in points], float)
    per, fixed = np.polyfit(n, w, 1)
    return float(fixed), float(1 / per)


def reaches(goal: float, local: tuple[float, float], ray: tuple[float, float]) -> float | None:
    """The job size from which Ray's images/s is at least `goal` × the local engine's, from the two fitted
    lines (local: a_l + n / r_l seconds, Ray: a_r + n / r_r); None when Ray's steady rate stays below."""
    (a_l, r_l), (a_r, r_r) = local, ray
    slope = 1 / r_l - goal / r_r
    if slope <= 0:
        return None
    return max(0.0, (goal * a_r - a_l) / slope)


def part_embedding(args, machine) -> dict:
    """Local engine vs Ray Data, both into an empty embedding cache, over a sweep of job sizes (smallest
    first, local and Ray alternating within each size, `--rounds` times), then Ray on 1 CPU. Every run
    reports its wall time, the CPU seconds per image of this process and the cores' worth of CPU every
    other process used meanwhile (Ray's own processes among them), and where its time went."""
    import ray

    from lookalike.catalogue import load_catalogue
    from lookalike.config import RunConfig
    from lookalike.distributed.ray_engine import connect, embed_images_ray
    from lookalike.encoders.embedder import embed_images
    from lookalike.encoders.embedding import image_encoder

    cat = load_catalogue(str(CATALOG))
    refs = [p.image for p in cat.products[: args.images]]
    sizes = sorted({min(int(x), len(refs)) for x in args.sweep.split(",")} | {len(refs)})
    onnx_home = Path(args.cache_dir or tempfile.mkdtemp(prefix="lookalike-scale-onnx-"))
    cfg = RunConfig.model_validate({"data": {"catalog": str(CATALOG)}, "encoder": {"cache_dir": str(onnx_home)}})
    enc = image_encoder(cfg)
    enc.forward(np.stack([enc.preprocess(Image.open(refs[0].path))]))  # the one-time ONNX export, outside the timing
    machine.note_threads(onnxruntime_local=enc.threads, onnxruntime_per_ray_actor="1 per CPU it holds")
    batch = cfg.encoder.batch_size
    res: dict = {"images": len(refs), "image_size": list(cfg.encoder.image_size), "batch_size": batch, "runs": []}

    # Every file read once before any timing: the engine measured first would otherwise pay the disk
    # (in an earlier version the local engine, measured first, varied by 30% between runs).
    warm = time.perf_counter()
    read = sum(len(r.path.read_bytes()) for r in refs)
    log(f"page cache warmed: {len(refs)} images, {read / 2**20:.0f} MiB in {time.perf_counter() - warm:.1f} s")

    def cold(engine: str, n: int, fn) -> dict:
        """One job into an empty embedding cache (the exported ONNX model shared, not re-exported)."""
        d = Path(tempfile.mkdtemp(prefix="lookalike-scale-cache-"))
        (d / "onnx").symlink_to(onnx_home / "onnx", target_is_directory=True)
        try:
            with Stopwatch(children=True) as sw:
                r = fn(refs[:n], d)
            assert r.computed == n - len(r.failed), (r.computed, len(r.failed))
        finally:
            shutil.rmtree(d, ignore_errors=True)
        run = {
            "engine": engine,
            "images": r.computed,
            "img_s": round(r.computed / sw.wall, 1),
            "this_process_cpu_ms_per_img": round(1000 * sw.cpu / r.computed, 2),
            # with Ray's processes (descendants of this one: a local Ray), what the job cost the machine
            "all_cpu_ms_per_img": round(
                1000 * (sw.cpu + (sw.children_cpu if engine != "local" else 0)) / r.computed, 2
            ),
            **sw.as_dict(),
            "timings": r.timings,
        }
        res["runs"].append(run)
        log(
            f"  {engine:<9} {n:>6} images: {run['img_s']:>6} img/s ({sw.wall:.2f} s); CPU per image "
            f"{run['all_cpu_ms_per_img']} ms (this process {run['this_process_cpu_ms_per_img']}, Ray's processes "
            f"the rest); this process {sw.cores_used:.2f} cores, other processes {sw.cores_others:.2f}; load "
            f"{sw.load_end:.2f}; {json.dumps(r.timings)}"
        )
        return run

    def local(n: int) -> dict:
        return cold("local", n, lambda rs, d: embed_images(rs, enc, d, batch, progress=False))

    def on_ray(n: int, cpus: int, actors: int | None = None) -> dict:
        """Ray's default pool (one single-threaded actor per CPU), or `actors` actors sharing the CPUs."""
        return cold(
            f"ray {cpus}cpu" + (f" {actors} actors" if actors else ""),
            n,
            lambda rs, d: embed_images_ray(rs, cfg.encoder, d, num_cpus=cpus, num_actors=actors, batch_size=batch),
        )

    class Nop:
        def __call__(self, batch):
            return batch

    # The benchmark's local Ray shares this machine with other people's processes: Ray's memory monitor
    # counts their memory too and, above 95% of the machine's, kills this job's actors (seen here while a
    # 1M-vector store was being built beside it). The actors need a few hundred MB; off for the benchmark.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")

    def start_ray(cpus: int) -> None:
        # Ray's own start-up apart from the jobs, as a running cluster has paid it once, not per job: ray.init
        # and Ray Data's detached service actors (stats, autoscaling coordinator), which the first Ray Data
        # job on a cluster starts (here: a job of 8 rows). Each job's figure still includes starting its
        # actor pool and loading the encoder in every actor.
        t = time.perf_counter()
        connect(num_cpus=cpus)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.range(8, override_num_blocks=2).map_batches(Nop, compute=ray.data.ActorPoolStrategy(size=1)).take_all()
        res.setdefault(f"ray_start_{cpus}cpu_s", []).append(round(time.perf_counter() - t, 1))

    # Local and Ray alternate within each job size, size after size, round after round, so that a slower
    # minute of a shared machine hits both. Ray stays started across its jobs, as a cluster would.
    start_ray(2)
    try:
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}:")
            for n in sizes:
                local(n)
                on_ray(n, 2)
            on_ray(len(refs), 2, actors=1)  # the other pool: one actor holding both CPUs (2 inference threads)
    finally:
        ray.shutdown()
    start_ray(1)
    try:
        one = on_ray(len(refs), 1)
    finally:
        ray.shutdown()

    def overall(engine: str, n: int) -> float:
        """images/s over all rounds of one engine at one size (total images / total seconds)."""
        runs = [x for x in res["runs"] if x["engine"] == engine and x["images"] >= n * 0.99 and x["images"] <= n]
        return round(sum(x["images"] for x in runs) / sum(x["wall_s"] for x in runs), 1)

    res["by_size"] = []
    for n in sizes:
        lo, ra = overall("local", n), overall("ray 2cpu", n)
        res["by_size"].append({"images": n, "local_img_s": lo, "ray_img_s": ra, "ray_vs_local": round(ra / lo, 3)})
    for engine in ("local", "ray 2cpu"):
        fixed, rate = fit_line([(x["images"], x["wall_s"]) for x in res["runs"] if x["engine"] == engine])
        res[f"fit_{engine.split()[0]}"] = {"fixed_s": round(fixed, 2), "steady_img_s": round(rate, 1)}
    fl, fr = res["fit_local"], res["fit_ray"]
    n90 = reaches(0.9, (fl["fixed_s"], fl["steady_img_s"]), (fr["fixed_s"], fr["steady_img_s"]))
    res["ray_0.9x_from_images"] = None if n90 is None else round(n90)
    measured = [b["images"] for b in res["by_size"] if b["ray_vs_local"] >= 0.9]
    res["ray_0.9x_measured_from_images"] = measured[0] if measured else None
    full = res["by_size"][-1]
    res["local_2cpu"], res["ray_2cpu"], res["ray_vs_local"] = (
        full["local_img_s"],
        full["ray_img_s"],
        full["ray_vs_local"],
    )
    res["ray_1cpu"] = one["img_s"]
    res["ray_2cpu_1_actor"] = overall("ray 2cpu 1 actors", len(refs))
    res["ray_2_vs_1cpu"] = round(res["ray_2cpu"] / res["ray_1cpu"], 3)
    for cpus in (1, 2):
        start = float(np.mean(res[f"ray_start_{cpus}cpu_s"]))
        rate = res[f"ray_{cpus}cpu"]
        res[f"ray_{cpus}cpu_with_start"] = round(len(refs) / (len(refs) / rate + start), 1)
    log(
        f"by job size (images/s over {args.rounds} round(s), wall clock, cold embedding cache, warm page cache): "
        + "; ".join(
            f"{b['images']}: local {b['local_img_s']}, Ray {b['ray_img_s']} = {b['ray_vs_local']}×"
            for b in res["by_size"]
        )
    )
    log(
        f"fitted wall = fixed + images / rate: local {fl['fixed_s']} s + n / {fl['steady_img_s']} img/s; Ray 2 CPUs "
        f"{fr['fixed_s']} s + n / {fr['steady_img_s']} img/s → Ray reaches 0.9× local from "
        f"{res['ray_0.9x_from_images'] if n90 is not None else 'never (its steady rate is below 0.9× local)'} images "
        f"(measured: from {res['ray_0.9x_measured_from_images']} of the sizes run)"
    )
    log(
        f"embedding {len(refs)} images at {tuple(cfg.encoder.image_size)}: local 2 CPUs {res['local_2cpu']} img/s; "
        f"Ray 2 CPUs {res['ray_2cpu']} img/s = {res['ray_vs_local']}× local (goal ≥ 0.9×), Ray 1 CPU "
        f"{res['ray_1cpu']} img/s, 2 vs 1 CPU {res['ray_2_vs_1cpu']}×. Ray's start-up, not in those: "
        f"{res['ray_start_2cpu_s']} s (2 CPUs), {res['ray_start_1cpu_s']} s (1 CPU); with it, "
        f"{res['ray_2cpu_with_start']} and {res['ray_1cpu_with_start']} img/s"
    )
    per_core = res["ray_1cpu"]
    res["projection"] = {
        "basis_img_s_per_core": per_core,
        "core_hours_1M": round(1e6 / per_core / 3600, 1),
        "core_hours_10M": round(1e7 / per_core / 3600, 1),
    }
    log(
        f"PROJECTION (not measured at that size; linear in images, from Ray at 1 CPU = {per_core} img/s per core): "
        f"1M images ≈ {res['projection']['core_hours_1M']} core-hours, 10M ≈ {res['projection']['core_hours_10M']} "
        f"core-hours (divide by the cluster's cores; e.g. 64 cores: {res['projection']['core_hours_10M'] / 64:.1f} h "
        "for 10M)"
    )
    return res


# --- part 4: /metrics and /api/kpi right after a write ---------------------------------------------------
def machine_line() -> str:
    import os

    load = os.getloadavg()
    return f"{os.cpu_count()} cores; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"


def kpi_model(args) -> Path:
    """--model, else a small checkpoint trained once in WORK: every 40th fashion product (~1,000: PCA to the
    stores' 512 dimensions needs 512 training images), one epoch, small images."""
    if args.model:
        return Path(args.model)
    root = Path(args.work) / "kpi-model"
    done = root / "checkpoint.txt"
    if done.exists():
        return Path(done.read_text().strip())
    import csv

    from lookalike.config import RunConfig
    from lookalike.pipeline import run_main

    cat = root / "catalog"
    shutil.rmtree(cat, ignore_errors=True)
    cat.mkdir(parents=True)
    (cat / "images").symlink_to(CATALOG / "images")
    with open(CATALOG / "styles.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(cat / "styles.csv", "w", newline="", encoding="utf-8") as g:
        writer = csv.DictWriter(g, list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows[::40] if (cat / "images" / f"{r['id']}.jpg").exists())
    cfg = RunConfig.model_validate(
        {
            "out_dir": str(root / "run"),
            "data": {"catalog": str(cat)},
            "train": {"epochs": 1, "batch_size": 64},
            "eval": {"sample_queries": 0},
            "encoder": {
                "projection": "pca",
                "projection_dim": DIM,
                "image_size": [64, 48],
                "cache_dir": args.cache_dir,
            },
        }
    )
    checkpoint = run_main(cfg, progress=False)["checkpoint"]
    done.write_text(str(checkpoint))
    return Path(checkpoint)


def kpi_store(args, d: dict, kind: str) -> str:
    """The stores part's store of this kind when it holds the N products (reused), else one loaded here."""
    from lookalike.retrieval.stores import open_store

    n, work = len(d["ids"]), Path(args.work)
    url = f"embedded://{work / 'embedded'}" if kind == "embedded" else f"pgserver://{work / 'pgdata'}?table=scale"
    store = open_store(url, dim=DIM)
    if len(store) == 0:
        t = time.perf_counter()
        store.load(batches(d), total=n)
        log(f"kpi [{kind}]: loaded {n:,} products in {time.perf_counter() - t:.0f} s")
    elif len(store) != n:
        raise SystemExit(f"{url} holds {len(store):,} products, not {n:,}: remove it or pass the matching --n")
    t = time.perf_counter()
    store.count_by(["category"], flag="is_new")  # what the service declares; a recount, once, on an older store
    log(f"kpi [{kind}]: {n:,} products; the service's counts declared in {time.perf_counter() - t:.2f} s")
    store.release()
    return url


def kpi_server(args) -> None:
    """The served process of the kpi part (a hidden mode of this script): the service's request log on stderr."""
    from lookalike.cli import setup_logging
    from lookalike.service.state import ServiceSettings
    from lookalike.service.workers import serve

    setup_logging()
    serve(ServiceSettings.model_validate_json(args.kpi_server), "127.0.0.1", args.port, log_level="warning")


def kpi_serve(args, d: dict, kind: str, checkpoint: Path) -> dict:
    """One store kind: start the served process, time the two endpoints without and right after writes."""
    import socket

    import httpx
    import psutil

    from lookalike.retrieval.stores import StoreItem, open_store
    from lookalike.service.state import ServiceSettings

    url = kpi_store(args, d, kind)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = ServiceSettings(
        checkpoint=str(checkpoint),
        store=url,
        upload_dir=str(Path(args.work) / "kpi-uploads"),
        category_field="category",
        search="approximate",
    )
    server_log = Path(args.work) / f"kpi-server-{kind}.log"  # its request log
    cmd = [sys.executable, __file__, "--kpi-server", settings.model_dump_json(), "--port", str(port)]
    t0 = time.perf_counter()
    with open(server_log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    r: dict = {"store": url, "products": len(d["ids"]), "server_log": str(server_log)}

    def timed(path: str) -> tuple[float, httpx.Response]:
        t = time.perf_counter()
        resp = client.get(path)
        ms = (time.perf_counter() - t) * 1000
        assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])
        return ms, resp

    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the kpi server ended (exit {proc.returncode}); see {server_log}")
            try:
                kpi = client.get("/api/kpi").json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        r["server_ready_s"] = round(time.perf_counter() - t0, 1)
        while kpi["statistics"]["pending"]:
            time.sleep(0.2)
            kpi = client.get("/api/kpi").json()
        r["first_statistics_s"] = round(time.perf_counter() - t0, 1)
        r["statistics_compute_s"] = kpi["statistics"]["compute_s"]
        log(
            f"kpi [{kind}]: server answering {r['server_ready_s']} s after its start; the first whole-catalogue "
            f"statistics ready at {r['first_statistics_s']} s (computed in {r['statistics_compute_s']} s)"
        )
        steady: dict[str, list[float]] = {"/metrics": [], "/api/kpi": []}
        for _ in range(args.kpi_requests):
            for path, ms in steady.items():
                ms.append(timed(path)[0])
        r["steady"] = {path: pct(ms) for path, ms in steady.items()}

        writer = open_store(url)  # another process's handle, as `lookalike catalog` or another worker writes
        new = kpi["catalogue"]["new"]
        after: dict[str, list[float]] = {"/metrics": [], "/api/kpi": []}
        write_ms = []
        rng = np.random.default_rng(args.seed + 3)
        for pid in rng.choice(d["ids"][: int(d["n_synthetic"])], args.kpi_rounds, replace=False):
            it = writer.get(str(pid))
            t = time.perf_counter()
            writer.upsert([StoreItem(it.id, it.vector, {**it.metadata, "is_new": not it.metadata["is_new"]})])
            write_ms.append((time.perf_counter() - t) * 1000)
            new += -1 if it.metadata["is_new"] else 1
            ms, m = timed("/metrics")
            after["/metrics"].append(ms)
            ms, k = timed("/api/kpi")
            after["/api/kpi"].append(ms)
            counted = k.json()["catalogue"]["new"]
            gauge = f'lookalike_catalogue_products{{kind="new"}} {new}.0'
            assert counted == new and gauge in m.text, f"the write is not counted: {counted} new, {new} expected"
        r["after_write"] = {path: pct(ms) for path, ms in after.items()}
        r["write"] = pct(write_ms)
        t = time.perf_counter()
        last = writer.version()
        while (s := client.get("/api/kpi").json()["statistics"])["store_version"] != last:
            time.sleep(0.1)
        r["statistics_caught_up_s"] = round(time.perf_counter() - t, 1)
        r["statistics_compute_s_last"] = s["compute_s"]
        r["server_rss_gib"] = round(psutil.Process(proc.pid).memory_info().rss / 2**30, 2)
        writer.release()
    finally:
        proc.terminate()
        proc.wait(60)
    # the server's own time for the same requests, from its request log (no client, no connection)
    lines = [json.loads(line) for line in server_log.read_text().splitlines() if line.startswith("{")]
    paired = [(a, b) for a, b in itertools.pairwise(lines) if (a["route"], b["route"]) == ("/metrics", "/api/kpi")]
    for phase, rows in (("steady", paired[: args.kpi_requests]), ("after_write", paired[args.kpi_requests :])):
        r[f"server_{phase}"] = {
            "/metrics": pct([a["latency_ms"] for a, _ in rows]),
            "/api/kpi": pct([b["latency_ms"] for _, b in rows]),
        }
    st, aw = r["steady"], r["after_write"]
    sst, saw = r["server_steady"], r["server_after_write"]
    log(
        f"kpi [{kind}]: no writes ({args.kpi_requests} requests each): /metrics p50 {st['/metrics']['p50_ms']} / "
        f"p95 {st['/metrics']['p95_ms']} ms, /api/kpi p50 {st['/api/kpi']['p50_ms']} / "
        f"p95 {st['/api/kpi']['p95_ms']} ms"
    )
    log(
        f"kpi [{kind}]: right after a write ({args.kpi_rounds} writes by another process, each counted exactly at "
        f"once): /metrics p50 {aw['/metrics']['p50_ms']} / p95 {aw['/metrics']['p95_ms']} ms, /api/kpi p50 "
        f"{aw['/api/kpi']['p50_ms']} / p95 {aw['/api/kpi']['p95_ms']} ms (goal p95 ≤ 10 ms); a write took p50 "
        f"{r['write']['p50_ms']} ms"
    )
    log(
        f"kpi [{kind}]: the server's own time (its request log): no writes /metrics p50 {sst['/metrics']['p50_ms']} / "
        f"p95 {sst['/metrics']['p95_ms']} ms, /api/kpi p50 {sst['/api/kpi']['p50_ms']} / "
        f"p95 {sst['/api/kpi']['p95_ms']} ms; right after a write /metrics p50 {saw['/metrics']['p50_ms']} / "
        f"p95 {saw['/metrics']['p95_ms']} ms, /api/kpi p50 {saw['/api/kpi']['p50_ms']} / "
        f"p95 {saw['/api/kpi']['p95_ms']} ms"
    )
    log(
        f"kpi [{kind}]: the statistics described the last write {r['statistics_caught_up_s']} s after it (a "
        f"computation took {r['statistics_compute_s_last']} s); server RSS {r['server_rss_gib']} GiB"
    )
    return r


def part_kpi(args, d: dict) -> dict:
    res: dict = {"machine_at_start": machine_line()}
    log(f"kpi: {res['machine_at_start']}")
    checkpoint = kpi_model(args)
    for kind in args.stores.split(","):
        res[kind] = kpi_serve(args, d, kind, checkpoint)
    res["machine_at_end"] = machine_line()
    log(f"kpi: {res['machine_at_end']}")
    return res


def cpu_fits(e: dict) -> dict:
    """The 0.9× question in CPU seconds instead of wall seconds: CPU = fixed + images / rate for each engine
    (local: this process; Ray: the driver and every Ray process), and the job size from which Ray's job costs
    at most local's / 0.9. Wall-clock ratios on shared cores follow who gets the cores (several Ray processes
    outnumber one local process); CPU cost does not, and on an idle machine whose cores both engines keep
    busy, wall time follows it."""
    out = {}
    for engine, key in (("local", "local"), ("ray 2cpu", "ray")):
        pts = [
            (x["images"], x["cpu_s"] + (x.get("descendants_cpu_s", 0.0) if key == "ray" else 0.0))
            for x in e["runs"]
            if x["engine"] == engine
        ]
        fixed, rate = fit_line(pts)
        out[key] = {"fixed_cpu_s": round(fixed, 2), "img_per_cpu_s": round(rate, 1)}
    n90 = reaches(
        0.9,
        (out["local"]["fixed_cpu_s"], out["local"]["img_per_cpu_s"]),
        (out["ray"]["fixed_cpu_s"], out["ray"]["img_per_cpu_s"]),
    )
    out["ray_0.9x_from_images"] = None if n90 is None else round(n90)
    return out


def kpi_markdown(res: dict) -> str:
    """The README's /metrics and /api/kpi table, from the kpi part of this run or of a saved one."""
    kinds = [k for k in ("pgvector", "embedded") if k in res]

    def cell(kind: str, fmt) -> str:
        return fmt(res[kind])

    def p(r: dict, phase: str, path: str) -> str:
        return f"{r[phase][path]['p50_ms']} / {r[phase][path]['p95_ms']} ms"

    def goal(r: dict) -> str:
        p95 = r["after_write"]["/metrics"]["p95_ms"]
        return f"{r['after_write']['/metrics']['p50_ms']} / **{p95} ms**" + (" (missed)" if p95 > 10 else "")

    rows = [
        ("no writes: /metrics p50 / p95", lambda r: p(r, "steady", "/metrics")),
        ("no writes: /api/kpi p50 / p95", lambda r: p(r, "steady", "/api/kpi")),
        ("right after a write: /metrics p50 / p95 (goal p95 ≤ 10 ms)", goal),
        ("right after a write: /api/kpi p50 / p95", lambda r: p(r, "after_write", "/api/kpi")),
        (
            "the server's own time right after a write (its request log): /metrics, /api/kpi p95",
            lambda r: (
                f"{r['server_after_write']['/metrics']['p95_ms']} ms, "
                f"{r['server_after_write']['/api/kpi']['p95_ms']} ms"
            ),
        ),
        ("a write by another process, p50", lambda r: f"{r['write']['p50_ms']:,} ms"),
        (
            "the background statistics described the last write after",
            lambda r: f"{r['statistics_caught_up_s']} s (a computation {r['statistics_compute_s_last']} s)",
        ),
    ]
    n = res[kinds[0]]["products"] if kinds else 0
    lines = [f"| {n:,} products | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(k, f) for k in kinds) + " |" for label, f in rows]
    return "\n".join(lines)


def embedding_markdown(e: dict, rounds: int) -> str:
    """The README's embedding table, from this run."""

    def runs(engine: str, n: int) -> list[dict]:
        return [x for x in e["runs"] if x["engine"] == engine and n * 0.99 <= x["images"] <= n]

    def cpu(engine: str, n: int) -> str:
        """CPU per image of this process and Ray's (the job's whole cost), and the cores the rest of the
        machine used meanwhile (Ray's processes included, for the Ray rows)."""
        rs = runs(engine, n)
        wall = sum(x["wall_s"] for x in rs)
        ray_cpu = 0.0 if engine == "local" else sum(x.get("descendants_cpu_s", 0.0) for x in rs)
        ms = (sum(x["cpu_s"] for x in rs) + ray_cpu) * 1000 / sum(x["images"] for x in rs)
        if engine == "local":  # a started Ray idles beside it: its processes are counted with the others'
            used = sum(x["cores_used"] * x["wall_s"] for x in rs) / wall
            others = sum(x["cores_used_by_others"] * x["wall_s"] for x in rs) / wall
            return f"{ms:.2f} ms CPU/image; {used:.2f} cores, other processes {others:.2f}"
        job = sum(x["cpu_s"] + x.get("descendants_cpu_s", 0.0) for x in rs) / wall
        return f"{ms:.2f} ms CPU/image in driver and Ray; {job:.2f} cores"

    lines = [
        "| job (images, cold cache) | local engine, 2 CPUs | Ray Data, 2 CPUs (2 actors) | Ray / local |",
        "|---|---|---|---|",
    ]
    for b in e["by_size"]:
        n = b["images"]
        lines.append(
            f"| {n:,} | {b['local_img_s']} images/s ({cpu('local', n)}) | {b['ray_img_s']} images/s "
            f"({cpu('ray 2cpu', n)}) | {b['ray_vs_local']:.3f}× |"
        )
    fl, fr = e["fit_local"], e["fit_ray"]
    n90 = e["ray_0.9x_from_images"]
    lines.append(
        f"| fitted: wall = fixed + images / rate | {fl['fixed_s']:.2f} s + n / {fl['steady_img_s']} images/s | "
        f"{fr['fixed_s']:.2f} s + n / {fr['steady_img_s']} images/s | ≥ 0.9× from "
        f"{'never' if n90 is None else f'{n90:,} images'} |"
    )
    c = cpu_fits(e)
    n90c = c["ray_0.9x_from_images"]
    lines.append(
        f"| fitted: CPU seconds = fixed + images / rate | {c['local']['fixed_cpu_s']:.2f} s + n / "
        f"{c['local']['img_per_cpu_s']} images per CPU-second | {c['ray']['fixed_cpu_s']:.2f} s + n / "
        f"{c['ray']['img_per_cpu_s']} images per CPU-second | ≤ local / 0.9 from "
        f"{'never' if n90c is None else f'{n90c:,} images'} |"
    )
    ray_full = runs("ray 2cpu", e["images"])
    t = {k: np.mean([x["timings"].get(k, 0.0) for x in ray_full]) for k in ray_full[0]["timings"]}
    lines.append(
        f"| Ray job of {e['images']:,}: where its time went | | "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s" for k, v in t.items())
        + " | |"
    )
    lines.append(
        f"| Ray, 2 CPUs as 1 actor of 2 threads, {e['images']:,} images | | "
        f"{e['ray_2cpu_1_actor']} images/s ({cpu('ray 2cpu 1 actors', e['images'])}) | "
        f"{e['ray_2cpu_1_actor'] / e['local_2cpu']:.3f}× |"
    )
    lines.append(
        f"| Ray, 1 CPU, {e['images']:,} images | | {e['ray_1cpu']} images/s (2 CPUs: {e['ray_2_vs_1cpu']:.2f}×) | |"
    )
    lines.append(
        f"| Ray's own start-up (not in the rows above) | | {', '.join(map(str, e['ray_start_2cpu_s']))} s (2 CPUs); "
        f"with it, {e['ray_2cpu_with_start']} images/s at {e['images']:,} | |"
    )
    return "\n".join(lines) + f"\n\n{rounds} round(s); images/s over all rounds of a size."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="embedding,stores,memory")
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (the real 39,653 are added)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "scale"))
    ap.add_argument("--cache-dir", help="embedding cache with the real catalogue's vectors (else the default)")
    ap.add_argument("--images", type=int, default=8192, help="images of the largest embedding job")
    ap.add_argument("--sweep", default="512,1024,2048,4096", help="smaller embedding job sizes (comma-separated)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the sweep, local and Ray alternating")
    ap.add_argument(
        "--markdown",
        action="store_true",
        help="print the embedding, kpi and selectivity-sweep tables alone on stdout (rest: stderr)",
    )
    ap.add_argument(
        "--markdown-from",
        help="print the tables of a saved WORK/scale.json (embedding, kpi, selectivity sweep) and stop",
    )
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall and HNSW latency")
    ap.add_argument("--exact-queries", type=int, default=20, help="of those, how many time exact search too")
    ap.add_argument("--ef-search", type=int, help="HNSW ef_search for both stores (default: each store's own)")
    ap.add_argument("--reuse", action="store_true", help="search the stores an earlier run built in WORK")
    ap.add_argument(
        "--measure",
        default="filters,ef,sweep",
        help="the stores part's searches: filters (none / is_new / category), ef (ef_search sweep), sweep "
        "(selectivity sweep with both paths forced)",
    )
    ap.add_argument("--path-queries", type=int, default=20, help="queries per forced path in the selectivity sweep")
    ap.add_argument("--stores", default="pgvector,embedded", help="which stores the stores part measures")
    ap.add_argument("--maintenance-work-mem", default="6GB")
    ap.add_argument("--build-workers", type=int, default=2)
    ap.add_argument("--shared-buffers", default="6GB", help="pgvector server's shared_buffers")
    ap.add_argument("--bank", type=int, default=28_000, help="hubness query-bank size (fashion-products: ~28k)")
    ap.add_argument("--eval-queries", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="kpi part: the served checkpoint (default: a small one trained in WORK)")
    ap.add_argument("--kpi-rounds", type=int, default=50, help="kpi part: writes, each followed by the two requests")
    ap.add_argument("--kpi-requests", type=int, default=200, help="kpi part: requests of each endpoint without writes")
    ap.add_argument("--dims", default="512,128", help="adapter part: the stored dimensions compared (512: --base's)")
    ap.add_argument("--base", help="adapter part: where the 512-d data and stores were built (default WORK)")
    ap.add_argument("--compact-shared-buffers", default="2GB", help="adapter part: the compact pgvector's")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--kpi-server", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kpi_server:
        kpi_server(args)
        return
    if args.stage:
        print(json.dumps(stage(args.stage, Path(args.work), args.bank, args.eval_queries)))
        return
    if args.markdown_from:
        saved = json.loads(Path(args.markdown_from).read_text())
        m = saved.get("machine", {})
        if "embedding" in saved:
            print(embedding_markdown(saved["embedding"], saved["args"]["rounds"]))
        if "kpi" in saved:
            print(kpi_markdown(saved["kpi"]))
        if "stores" in saved and any("sweep" in v for v in saved["stores"].values() if isinstance(v, dict)):
            print(sweep_markdown(saved["stores"]))
        print(
            f"\nPrinted by `{m.get('command')}` at commit {m.get('commit')}: {m.get('cpu')}, "
            f"{m.get('cores', {}).get('available')} cores; 1-minute load {m.get('load_start', [0])[0]:.2f} at start, "
            f"{(m.get('load_end') or [0])[0]:.2f} at end, at most {m.get('load_max_1min')} (reprinted by "
            f"`python benchmarks/scale.py --markdown-from {args.markdown_from}`)."
        )
        return
    from lookalike.provenance import provenance

    machine = Machine.start("scale.py", args.markdown)
    work = Path(args.work).resolve()  # store URLs need absolute paths
    args.work = str(work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args), "provenance": provenance()}
    parts = args.parts.split(",")
    if "embedding" in parts:
        report["embedding"] = part_embedding(args, machine)
        if args.markdown:
            machine.table(embedding_markdown(report["embedding"], args.rounds))
    if "stores" in parts or "memory" in parts or "kpi" in parts or "adapter" in parts:
        t = time.perf_counter()
        d = dataset(args.n, args.seed, Path(args.base).resolve() if args.base else work, args.cache_dir)
        log(
            f"data: {int(d['n_synthetic']):,} synthetic clustered + {int(d['n_real']):,} real fashion-products "
            f"vectors, {DIM}-d ({time.perf_counter() - t:.0f} s to make or read)"
        )
        if "stores" in parts:
            report["stores"] = part_stores(args, d)
            if args.markdown and any("sweep" in v for v in report["stores"].values() if isinstance(v, dict)):
                machine.table(sweep_markdown(report["stores"]))
        if "adapter" in parts:
            report["adapter"] = part_adapter(args, d)
            if args.markdown:
                machine.table(adapter_markdown(report["adapter"]))
        if "kpi" in parts:
            report["kpi"] = part_kpi(args, d)
            if args.markdown:
                machine.table(kpi_markdown(report["kpi"]))
        del d
        if "memory" in parts:
            log(f"peak memory at {args.n + 39_653:,} products (each computation in its own process):")
            report["memory"] = part_memory(args)
    report["peak_rss_gib_this_process"] = peak_rss_gib()
    report["machine"] = machine.finish()
    (work / "scale.json").write_text(json.dumps(report, indent=2, default=str))
    log(f"figures written to {work / 'scale.json'}")


if __name__ == "__main__":
    main()
