"""Service benchmark: prints the figures of the service issue's targets on the ~40k fashion-products catalogue.

    python benchmarks/service.py --model runs/bench/main/checkpoints/best_model.pt [--cache-dir DIR]

1. ingest the catalogue into an embedded store (frozen embeddings come from the cache when present);
2. customer_input latency through the in-process HTTP client: by product id and by uploaded image,
   N requests each, p50/p95/p99 and success rate (targets: p95 ≤ 30 ms and ≤ 150 ms, 100% success);
3. store exact search vs brute force (numpy and FAISS IndexFlatIP) on the same vectors (target ≤ 1.2×);
4. HNSW recall@10 against exact and speed-up, embedded (FAISS) and PostgreSQL + pgvector (target ≥ 0.95);
5. schemathesis against the served OpenAPI schema: any 5xx fails (target: none);
6. `history`: customer_input over real HTTP (a `lookalike serve` process, keep-alive client) with a JSON history of
   50 events per request, per profile (mean, multi-interest; tower with --user-tower): p50/p95/p99 and the load
   (target: p95 ≤ 30 ms on the ~40k catalogue);
7. `purchases`: SIMULATED purchase events (no retailer data here: the drawing is ours) posted to the same server,
   each established product bought with a probability rising with its centrality, times log-normal noise; it
   prints the Spearman correlation of centrality against units that the service reports (/api/kpi), scipy's on the
   same data, and the overlap of top10_to_new's best sellers from purchases with the centrality proxy's top 10.
`--parts` picks some of them (ingest always runs). Without the --model file, a short checkpoint is trained first
(the whole catalogue, --train-epochs). Figures are also written to WORK/service_benchmark.json with provenance.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
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


PARTS = ("latency", "exact", "hnsw", "pg", "fuzz", "history", "purchases")
SIMULATED = "SIMULATED purchases"


def load_line() -> str:
    import os

    a = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {a[0]:.2f} / {a[1]:.2f} / {a[2]:.2f} (1 / 5 / 15 min)"


def checkpoint(args, work: Path) -> str:
    """--model if it exists; else a short checkpoint trained here on the whole catalogue (the frozen image
    vectors come from the embedding cache when present)."""
    if Path(args.model).exists():
        return args.model
    from lookalike.config import RunConfig
    from lookalike.pipeline import run_main

    log(f"{args.model} not found: training a {args.train_epochs}-epoch checkpoint on {args.catalog}")
    t = time.perf_counter()
    cfg = RunConfig.model_validate(
        {
            "out_dir": str(work / "model"),
            "data": {"catalog": args.catalog},
            "train": {"epochs": args.train_epochs},
            "eval": {"sample_queries": 0},
            "encoder": {"cache_dir": args.cache_dir},
        }
    )
    out = str(run_main(cfg, progress=False)["checkpoint"])
    log(f"trained {out} in {time.perf_counter() - t:.0f} s")
    return out


def histories(ids: list[str], meta: list[dict], n: int, rng, length: int = 50) -> list[list[str]]:
    """`n` histories of `length` established products: 1-3 interests, each a (gender, articleType, baseColour)
    group with ≥ 5 established products, and 10% clicks on random established products (personalise.py's
    customers, on the stored rows)."""
    groups: dict[str, list[str]] = {}
    established = [i for i, m in zip(ids, meta) if m.get("is_new") is not True]
    for i, m in zip(ids, meta):
        if m.get("is_new") is not True:
            groups.setdefault("|".join(str(m.get(f)) for f in ("gender", "articleType", "baseColour")), []).append(i)
    usable = sorted(g for g, v in groups.items() if len(v) >= 5)
    out = []
    for _ in range(n):
        picked = [usable[j] for j in rng.choice(len(usable), int(rng.integers(1, 4)), replace=False)]
        noise = int(rng.binomial(length, 0.1))
        counts = rng.multinomial(length - noise, np.ones(len(picked)) / len(picked))
        h = [str(p) for g, c in zip(picked, counts) for p in rng.choice(groups[g], c)]
        h += [str(p) for p in rng.choice(established, noise)]
        out.append([h[j] for j in rng.permutation(len(h))])
    return out


def wait_statistics(http, timeout: float = 600) -> float:
    """Seconds until the server's first whole-catalogue statistics (a child process computes them at start-up:
    timing before they are done would measure that too)."""
    t = time.perf_counter()
    while http.get("/api/kpi").json()["statistics"]["pending"]:
        if time.perf_counter() - t > timeout:
            raise SystemExit("the server's catalogue statistics took too long")
        time.sleep(0.5)
    return time.perf_counter() - t


def history_latency(args, http, ids, meta, rng, res: dict) -> None:
    """customer_input over HTTP with a 50-event JSON history, per profile."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    kinds = ["click", "cart", "purchase", "view"]
    bodies = []
    for h in histories(ids, meta, args.requests, rng):
        events = [
            {
                "product_id": p,
                "event": kinds[int(rng.choice(4, p=[0.7, 0.15, 0.05, 0.1]))],
                "ts": (now - dt.timedelta(hours=len(h) - j)).isoformat(timespec="seconds"),
            }
            for j, p in enumerate(h)
        ]
        bodies.append({"history": events, "k": 10})
    profiles = ["mean", "multi-interest", *(["tower"] if args.user_tower else [])]
    out = {"products": len(ids), "history_events": 50, "requests": args.requests, "transport": "HTTP, keep-alive"}
    for profile in profiles:
        for b in bodies[:20]:  # warm-up
            http.post("/api/recommend/customer_input", json={**b, "profile": profile})
        ms, good = [], 0
        for b in bodies:
            t = time.perf_counter()
            r = http.post("/api/recommend/customer_input", json={**b, "profile": profile})
            ms.append((time.perf_counter() - t) * 1000)
            good += r.status_code == 200 and len(r.json()["items"]) == 10
        out[profile] = {**pct(ms), "success_rate": good / len(ms), "load": load_line()}
        log(
            f"customer_input over HTTP, JSON history of 50 events, profile {profile}, {len(ids)} products: "
            f"p50 {out[profile]['p50_ms']} ms, p95 {out[profile]['p95_ms']} ms, p99 {out[profile]['p99_ms']} ms "
            f"({len(ms)} requests, success {good / len(ms):.1%}; goal p95 ≤ 30 ms); {load_line()}"
        )
    res["customer_input_history_http"] = out


def simulated_purchases(args, http, ids, vectors, meta, rng, res: dict) -> None:
    """SIMULATED purchases posted as events; the proxy check the service reports against scipy's, and the overlap
    of the purchases' top 10 with the centrality proxy's."""
    import datetime as dt

    from scipy.stats import spearmanr

    from lookalike.evaluation.centrality import centrality_scores

    old = [j for j, m in enumerate(meta) if m.get("is_new") is not True]
    central = centrality_scores(vectors[old])
    z = (central - central.mean()) / central.std()
    # each product's appeal: centrality (z-score) × strength, plus log-normal noise; purchases drawn in proportion
    appeal = np.exp(args.purchase_strength * z + args.purchase_noise * rng.standard_normal(len(old)))
    picks = rng.choice(len(old), args.purchases, p=appeal / appeal.sum())
    now = dt.datetime.now(dt.UTC)
    before = http.post("/api/recommend/top10_to_new", data={"k": 1, "limit": 10}).json()
    events = [
        {
            "event_id": f"sim-purchase-{n}",
            "customer_id": f"sim-{int(rng.integers(0, 10_000))}",
            "type": "purchase",
            "product_id": ids[old[j]],
            "ts": (now - dt.timedelta(days=float(rng.uniform(0, 29)))).isoformat(timespec="seconds"),
        }
        for n, j in enumerate(picks)
    ]
    accepted = 0
    for b in range(0, len(events), 1000):
        accepted += http.post("/api/events", json={"events": events[b : b + 1000]}).json()["accepted"]
    units = np.bincount(picks, minlength=len(old))
    sold = units > 0
    want = spearmanr(central[sold], units[sold])
    t = time.perf_counter()
    while True:  # the background statistics thread picks the purchases up
        proxy = http.get("/api/kpi").json()["online"]["best_seller_proxy"]
        if proxy and proxy["n_products"] == int(sold.sum()):
            break
        if time.perf_counter() - t > 300:
            raise SystemExit(f"the service's proxy check did not catch up: {proxy}")
        time.sleep(0.5)
    after = http.post("/api/recommend/top10_to_new", data={"k": 1, "limit": 10}).json()
    top_central = [s["id"] for s in before["best_sellers"]]
    top_sold = [s["id"] for s in after["best_sellers"]]
    overlap = len(set(top_central) & set(top_sold))
    res["simulated_purchases"] = {
        "label": SIMULATED,
        "purchases": args.purchases,
        "accepted": accepted,
        "strength": args.purchase_strength,
        "noise": args.purchase_noise,
        "service_proxy_check": proxy,
        "scipy_spearman": round(float(want.statistic), 4),
        "sources": [before["source"], after["source"]],
        "top10_centrality": top_central,
        "top10_purchases": top_sold,
        "top10_overlap": overlap,
        "seconds_until_reported": round(time.perf_counter() - t, 1),
    }
    log(
        f"{SIMULATED} (drawn here: appeal exp({args.purchase_strength} × centrality z-score + "
        f"{args.purchase_noise} × N(0,1)), {args.purchases} purchases over the last 29 days, {accepted} accepted): "
        f"the service reports Spearman {proxy['spearman']} over {proxy['n_products']} established products sold "
        f"(scipy on the same data: {want.statistic:.4f}); top10_to_new best sellers from purchases vs the centrality "
        f"proxy's top 10: {overlap} of 10 in common (sources {before['source']} → {after['source']}). Simulated: "
        "the real figure can only come from a retailer's purchases"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        "--checkpoint",
        default=str(ROOT / "runs/bench/main/checkpoints/best_model.pt"),
        help="a trained checkpoint (trained here for --train-epochs when the file does not exist)",
    )
    ap.add_argument("--train-epochs", type=int, default=1, help="epochs of the checkpoint trained without --model")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts run (default all)")
    ap.add_argument("--user-tower", help="a user tower file: the history part also times profile=tower")
    ap.add_argument("--purchases", type=int, default=20_000, help="SIMULATED purchase events posted")
    ap.add_argument("--purchase-strength", type=float, default=1.0, help="weight of centrality in the simulation")
    ap.add_argument("--purchase-noise", type=float, default=1.0, help="log-normal noise of the simulation")
    ap.add_argument("--catalog", default=str(ROOT.parent / "shared/data/fashion-products"))
    ap.add_argument("--cache-dir", help="embedding cache (default $LOOKALIKE_CACHE or ~/.cache/lookalike)")
    ap.add_argument("--work", help="store directories and results (default: a new temp dir)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=300, help="queries for the store comparisons")
    ap.add_argument("--fuzz-examples", type=int, default=30, help="schemathesis examples per operation")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-fuzz", action="store_true")
    args = ap.parse_args()
    parts = set(args.parts) - ({"pg"} if args.skip_pg else set()) - ({"fuzz"} if args.skip_fuzz else set())
    warnings.simplefilter("ignore")
    from lookalike.encoders.base import default_threads

    machine = Machine.start("service.py", onnxruntime=default_threads())

    from lookalike.catalogue import load_catalogue
    from lookalike.inference import QueryEncoder
    from lookalike.provenance import provenance
    from lookalike.recommend.catalogue import ingest_catalogue
    from lookalike.recommend.newness import FASHION_PRODUCTS_NEW
    from lookalike.retrieval.stores import open_store

    work = Path(args.work or tempfile.mkdtemp(prefix="lookalike-service-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        **provenance(),
        "model": args.model,
        "catalog": args.catalog,
    }
    rng = np.random.default_rng(0)
    args.model = checkpoint(args, work)
    res["model"] = args.model

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
    if "latency" in parts:
        latency(args, url, work, ids, cat, rng, res)

    # 3. exact search vs brute force -----------------------------------------------------------------
    qi = rng.choice(len(ids), args.queries, replace=False)
    qs = vectors[qi]
    if "exact" in parts:
        exact_vs_brute(store, vectors, new_mask, ids, qs, res)

    # 4. HNSW recall and speed-up --------------------------------------------------------------------
    if "hnsw" in parts or "pg" in parts:
        hnsw(args, store, work, enc, ids, vectors, meta, qs, parts, res)

    # 5. schemathesis ---------------------------------------------------------------------------------
    if "fuzz" in parts:
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

    # 6-7. a real server over HTTP: 50-event histories, then SIMULATED purchases ---------------------------
    if parts & {"history", "purchases"}:
        import httpx

        store.release()  # the server process writes events beside it
        extra = ("--user-tower", args.user_tower) if args.user_tower else ()
        server = Server(args.model, url, args.catalog, work / "http-uploads", *extra, cache_dir=args.cache_dir)
        server.started()
        tail: deque = deque(maxlen=100)  # read as it comes: a full pipe would block the server's request log
        threading.Thread(target=lambda: tail.extend(server.proc.stdout), daemon=True).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                log(f"server up; its first catalogue statistics took {wait_statistics(http):.1f} s more")
                if "history" in parts:
                    history_latency(args, http, ids, meta, rng, res)
                if "purchases" in parts:
                    simulated_purchases(args, http, ids, vectors, meta, rng, res)
        finally:
            server.stop()
            if sys.exc_info()[0] is not None:
                log("the server's last lines:\n" + "".join(tail))

    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["machine"] = machine.finish()
    (work / "service_benchmark.json").write_text(json.dumps(res, indent=2, default=str))
    log(f"peak RSS {res['peak_rss_mb']} MB; wrote {work / 'service_benchmark.json'}")


def latency(args, url: str, work: Path, ids, cat, rng, res: dict) -> None:
    """customer_input by product id and by uploaded image through the in-process HTTP client."""
    from fastapi.testclient import TestClient

    from lookalike.service.app import ServiceSettings, create_app

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
    app.state.service.close()


def exact_vs_brute(store, vectors, new_mask, ids, qs, res: dict) -> None:
    """The store's exact search against numpy and FAISS flat on the same vectors."""
    import faiss

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


def hnsw(args, store, work: Path, enc, ids, vectors, meta, qs, parts: set, res: dict) -> None:
    """HNSW recall@10 against exact and its speed-up: embedded (FAISS), then PostgreSQL + pgvector."""
    from lookalike.retrieval.stores import open_store

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

    if "pg" in parts:
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


if __name__ == "__main__":
    main()
