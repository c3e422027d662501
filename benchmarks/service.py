"""Service benchmark: prints the figures of the service issue's targets on the ~40k fashion-products catalogue.

    python benchmarks/service.py --model runs/bench/main/checkpoints/best_model.pt [--cache-dir DIR]

1. ingest the catalogue into an embedded store (frozen embeddings come from the cache when present);
2. customer_input latency through the in-process HTTP client: by product id and by uploaded image,
   N requests each, p50/p95/p99 and success rate (targets: p95 ≤ 30 ms and ≤ 150 ms, 100% success);
3. store exact search vs brute force (numpy and FAISS IndexFlatIP) on the same vectors (target ≤ 1.2×);
4. HNSW recall@10 against exact and speed-up, embedded (FAISS) and PostgreSQL + pgvector (target ≥ 0.95);
5. schemathesis against the served OpenAPI schema: any 5xx fails (target: none).
Figures are also written to WORK/service_benchmark.json with provenance.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import Machine  # noqa: E402
from serving import Server, schemathesis  # noqa: E402


def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "n": len(a),
        "mean_ms": round(float(a.mean()), 2),
        **{f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)},
    }


def timed(fn, queries) -> tuple[list, list[float]]:
    out, ms = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        ms.append((time.perf_counter() - t) * 1000)
    return out, ms


def recall(approx: list[list], exact: list[list]) -> float:
    return float(np.mean([len({i for i, _ in a} & {i for i, _ in e}) / max(len(e), 1) for a, e in zip(approx, exact)]))


def topk_numpy(q: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    s = v @ q
    part = np.argpartition(-s, k - 1)[:k]
    return part[np.argsort(-s[part], kind="stable")]


def log(msg: str) -> None:
    print(msg, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "runs/bench/main/checkpoints/best_model.pt"))
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared/data/fashion-products"))
    ap.add_argument("--cache-dir", help="embedding cache (default $LOOKALIKE_CACHE or ~/.cache/lookalike)")
    ap.add_argument("--work", help="store directories and results (default: a new temp dir)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=300, help="queries for the store comparisons")
    ap.add_argument("--fuzz-examples", type=int, default=30, help="schemathesis examples per operation")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-fuzz", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from lookalike.encoders.base import default_threads

    machine = Machine.start("service.py", onnxruntime=default_threads())

    import faiss
    from fastapi.testclient import TestClient

    from lookalike.catalogue import load_catalogue
    from lookalike.inference import QueryEncoder
    from lookalike.provenance import provenance
    from lookalike.recommend.catalogue import ingest_catalogue
    from lookalike.recommend.newness import FASHION_PRODUCTS_NEW
    from lookalike.retrieval.stores import open_store
    from lookalike.service.app import ServiceSettings, create_app

    work = Path(args.work or tempfile.mkdtemp(prefix="lookalike-service-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        **provenance(),
        "model": args.model,
        "catalog": args.catalog,
    }
    rng = np.random.default_rng(0)

    # 1. ingest --------------------------------------------------------------------------------------
    enc = QueryEncoder.load(args.model, args.cache_dir)
    cat = load_catalogue(args.catalog, fallback_schema=enc.schema)
    url = f"embedded://{work}/embedded"
    store = open_store(url, enc.dim)
    t = time.perf_counter()
    rep = ingest_catalogue(store, cat, enc, FASHION_PRODUCTS_NEW, progress=True)
    res["ingest_embedded"] = {**rep, "seconds": round(time.perf_counter() - t, 1)}
    log(
        f"ingested {rep['ingested']} products ({rep['new']} new by {rep['rule']}) into {url} "
        f"in {res['ingest_embedded']['seconds']} s"
    )
    ids, vectors, meta = store.items()
    new_mask = np.array([m["is_new"] for m in meta])

    # 2. service latency -----------------------------------------------------------------------------
    app = create_app(
        ServiceSettings(
            checkpoint=args.model,
            store=url,
            catalog=args.catalog,
            upload_dir=str(work / "uploads"),
            cache_dir=args.cache_dir,
        )
    )
    client = TestClient(app)
    by_id = rng.choice(ids, args.requests)
    images = [cat.products[i].image.path for i in rng.integers(0, len(cat.products), args.requests)]
    for pid in by_id[:20]:  # warm-up: encoder sessions, caches
        client.post("/api/recommend/customer_input", data={"product_id": pid, "k": 10})
    for p in images[:5]:
        client.post("/api/recommend/customer_input", files={"image": ("q.jpg", p.read_bytes(), "image/jpeg")})

    def ok(r) -> bool:
        return r.status_code == 200 and len(r.json()["items"]) == 10

    for name, payloads in (
        ("by_product_id", [{"data": {"product_id": pid, "k": 10}} for pid in by_id]),
        (
            "by_uploaded_image",
            [{"files": {"image": ("q.jpg", p.read_bytes(), "image/jpeg")}, "data": {"k": 10}} for p in images],
        ),
    ):
        responses, ms = timed(lambda kw: client.post("/api/recommend/customer_input", **kw), payloads)
        succ = sum(ok(r) for r in responses) / len(responses)
        res[f"customer_input_{name}"] = {**pct(ms), "success_rate": succ}
        log(f"customer_input {name}: {pct(ms)}, success {succ:.1%}")
    res["kpi_after_latency_runs"] = client.get("/api/kpi").json()["requests"]

    # 3. exact search vs brute force -----------------------------------------------------------------
    qi = rng.choice(len(ids), args.queries, replace=False)
    qs = vectors[qi]
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    new_rows = np.flatnonzero(new_mask)
    new_vecs = np.ascontiguousarray(vectors[new_rows])
    flat_new = faiss.IndexFlatIP(vectors.shape[1])
    flat_new.add(new_vecs)
    cmp = {}
    for label, store_fn, np_fn, faiss_fn in (
        (
            "whole catalogue",
            lambda q: store.search(q, 10)[0],
            lambda q: topk_numpy(q, vectors, 10),
            lambda q: flat.search(q[None, :], 10),
        ),
        (
            "new products (is_new filter)",
            lambda q: store.search(q, 10, {"is_new": True})[0],
            lambda q: topk_numpy(q, new_vecs, 10),
            lambda q: flat_new.search(q[None, :], 10),
        ),
    ):
        for fn in (store_fn, np_fn, faiss_fn):  # warm-up
            fn(qs[0])
        got, ms_store = timed(store_fn, qs)
        want, ms_np = timed(np_fn, qs)
        _, ms_faiss = timed(faiss_fn, qs)
        rows = vectors if label == "whole catalogue" else new_vecs
        id_list = ids if label == "whole catalogue" else [ids[r] for r in new_rows]
        same = np.mean([{i for i, _ in g} == {id_list[j] for j in w} for g, w in zip(got, want)])
        cmp[label] = {
            "store_exact": pct(ms_store),
            "numpy": pct(ms_np),
            "faiss_flat": pct(ms_faiss),
            "ratio_store_vs_numpy_mean": round(np.mean(ms_store) / np.mean(ms_np), 3),
            "ratio_store_vs_faiss_mean": round(np.mean(ms_store) / np.mean(ms_faiss), 3),
            "same_top10_as_numpy": float(same),
            "gallery": len(rows),
        }
        log(
            f"exact search, {label} ({len(rows)} vectors): store {np.mean(ms_store):.2f} ms, numpy "
            f"{np.mean(ms_np):.2f} ms, "
            f"FAISS flat {np.mean(ms_faiss):.2f} ms per query; store/numpy {cmp[label]['ratio_store_vs_numpy_mean']}×, "
            f"store/FAISS {cmp[label]['ratio_store_vs_faiss_mean']}×; same top-10 {same:.1%}"
        )
    res["exact_vs_brute_force"] = cmp

    # 4. HNSW recall and speed-up --------------------------------------------------------------------
    exact_all, ms_exact = timed(lambda q: store.search(q, 10)[0], qs)
    hn = open_store(f"embedded://{work}/embedded?index=hnsw&m=32&ef_search=64")
    t = time.perf_counter()
    hn.search(qs[0], 10, exact=False)
    build = time.perf_counter() - t
    approx, ms_hnsw = timed(lambda q: hn.search(q, 10, exact=False)[0], qs)
    exact_new = [store.search(q, 10, {"is_new": True})[0] for q in qs]
    approx_new, ms_hnsw_new = timed(lambda q: hn.search(q, 10, {"is_new": True}, exact=False)[0], qs)
    res["hnsw_embedded"] = {
        "m": 32,
        "ef_search": 64,
        "build_s": round(build, 1),
        "recall@10": recall(approx, exact_all),
        "recall@10_is_new_filter": recall(approx_new, exact_new),
        "exact": pct(ms_exact),
        "hnsw": pct(ms_hnsw),
        "hnsw_is_new_filter": pct(ms_hnsw_new),
        "speedup_mean": round(np.mean(ms_exact) / np.mean(ms_hnsw), 2),
    }
    log(
        f"embedded HNSW (FAISS, M=32, efSearch=64, built in {build:.1f} s): recall@10 "
        f"{res['hnsw_embedded']['recall@10']:.4f} "
        f"(is_new filter {res['hnsw_embedded']['recall@10_is_new_filter']:.4f}); {np.mean(ms_hnsw):.3f} ms vs exact "
        f"{np.mean(ms_exact):.3f} ms per query = {res['hnsw_embedded']['speedup_mean']}× speed-up"
    )

    if not args.skip_pg:
        from lookalike.retrieval.stores import StoreItem

        pg = open_store(f"pgserver://{work}/pgdata?table=bench", enc.dim)
        t = time.perf_counter()
        pg.upsert([StoreItem(i, v, m) for i, v, m in zip(ids, vectors, meta)])
        load_s = time.perf_counter() - t
        pg_exact, ms_pg_exact = timed(lambda q: pg.search(q, 10)[0], qs)
        pg_approx, ms_pg_hnsw = timed(lambda q: pg.search(q, 10, exact=False)[0], qs)
        pg_approx_new = [pg.search(q, 10, {"is_new": True}, exact=False)[0] for q in qs]
        same = np.mean([[i for i, _ in a] == [i for i, _ in b] for a, b in zip(pg_exact, exact_all)])
        res["pgvector"] = {
            "load_with_index_build_s": round(load_s, 1),
            "exact_same_top10_as_embedded": float(same),
            "recall@10": recall(pg_approx, exact_all),
            "recall@10_is_new_filter": recall(pg_approx_new, exact_new),
            "exact": pct(ms_pg_exact),
            "hnsw": pct(ms_pg_hnsw),
            "speedup_mean": round(np.mean(ms_pg_exact) / np.mean(ms_pg_hnsw), 2),
            "ef_search": pg.ef_search,
        }
        log(
            f"pgvector: loaded {len(ids)} rows + HNSW index in {load_s:.1f} s; exact top-10 identical to embedded on "
            f"{same:.1%} of queries; HNSW recall@10 {res['pgvector']['recall@10']:.4f} (is_new filter "
            f"{res['pgvector']['recall@10_is_new_filter']:.4f}); {np.mean(ms_pg_hnsw):.2f} ms vs exact "
            f"{np.mean(ms_pg_exact):.2f} ms "
            f"= {res['pgvector']['speedup_mean']}× speed-up"
        )
        pg.close()

    # 5. schemathesis ---------------------------------------------------------------------------------
    if not args.skip_fuzz:
        server = Server(args.model, url, args.catalog, work / "fuzz-uploads", cache_dir=args.cache_dir).started()
        try:
            res["schemathesis"] = schemathesis(server.url, args.fuzz_examples, work)
            log(
                f"schemathesis (checks not_a_server_error, {args.fuzz_examples} examples/operation): exit "
                f"{res['schemathesis']['exit_code']}, {res['schemathesis']['requests']} requests, "
                f"{res['schemathesis']['5xx']} answered 5xx; " + " | ".join(res["schemathesis"]["summary"])
            )
        finally:
            server.stop()

    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["machine"] = machine.finish()
    (work / "service_benchmark.json").write_text(json.dumps(res, indent=2, default=str))
    log(f"peak RSS {res['peak_rss_mb']} MB; wrote {work / 'service_benchmark.json'}")


if __name__ == "__main__":
    main()
