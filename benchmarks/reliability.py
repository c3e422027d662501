"""Reliability benchmark: prints counts for the service on the embedded store and on PostgreSQL + pgvector.

    python benchmarks/reliability.py [--model CKPT --catalog DIR] [--stores embedded pgvector] [--kill-trials 10]

Without --model a tiny model is trained on every 100th fashion product (one epoch, small images): these
checks are about the service's mechanics, not ranking quality. For each store, on a fresh copy of the
catalogue each time:

1. bad input: 40+ kinds of malformed request over every endpoint (with a write token, so validation is
   what answers) → how many got a 4xx with a cause, and whether anything was written;
2. schemathesis over every operation of the served OpenAPI schema → requests that answered 5xx;
3. 100 concurrent adds + 100 searches + 20 concurrent updates of one id against a real server → lost writes;
4. kill -9 of a real `lookalike serve` during bursts of adds, N trials → acknowledged-but-lost products,
   half-written products (no image on disk), temp files and unreferenced images left after the restart;
   then a clean restart → catalogue unchanged;
5. auth: every write endpoint with no token, a wrong token and a read-only token → refused;
6. events: POST /api/events at --event-rate events/s (batches of 50, 5% duplicates) for --event-seconds, then
   kill -9 of the server during event bursts → acknowledged-but-lost events, and whether the KPI counters equal
   the stored rows (`--parts events` runs this part alone).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import random
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import Machine  # noqa: E402
from serving import Server, schemathesis  # noqa: E402

FIELDS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")


def drained(srv: Server) -> Server:
    """A server whose output (a request-log line per request) is read as it comes: a pipe nobody reads fills
    after a few hundred requests and then blocks the server's logging, and with it every request."""
    threading.Thread(target=lambda: [None for _ in srv.proc.stdout], daemon=True).start()
    return srv


def log(msg: str) -> None:
    print(msg, flush=True)


def tiny_model(work: Path, fashion: Path) -> tuple[str, str]:
    from lookalike.config import RunConfig
    from lookalike.pipeline import run_main

    cat = work / "catalog"
    cat.mkdir(parents=True)
    (cat / "images").symlink_to(fashion / "images")
    with (
        open(fashion / "styles.csv", newline="", encoding="utf-8") as f,
        open(cat / "styles.csv", "w", newline="", encoding="utf-8") as g,
    ):
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames)
        writer.writeheader()
        writer.writerows(
            r for n, r in enumerate(reader) if n % 100 == 0 and (fashion / "images" / f"{r['id']}.jpg").exists()
        )
    cfg = RunConfig.model_validate(
        {
            "out_dir": str(work / "run"),
            "data": {"catalog": str(cat)},
            "train": {"epochs": 1, "batch_size": 64},
            "eval": {"sample_queries": 0},
            "encoder": {"projection": "center", "image_size": [64, 48], "runtime": "torch"},
        }
    )
    return run_main(cfg, progress=False)["checkpoint"], str(cat)


class Bench:
    def __init__(self, args, model: str, catalog: str, work: Path):
        from lookalike.cli import main
        from lookalike.service.auth import add_token

        self.args, self.model, self.catalog, self.work, self.cli = args, model, catalog, work, main
        self.auth = work / "tokens.json"
        self.write = add_token(self.auth, "write", "benchmark")[1]
        self.read = add_token(self.auth, "read", "benchmark")[1]
        self.n = 0
        with open(Path(catalog) / "styles.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self.rows = [r for r in rows if (Path(catalog) / "images" / f"{r['id']}.jpg").exists()]
        self.images = [(Path(catalog) / "images" / f"{r['id']}.jpg").read_bytes() for r in self.rows[:40]]

    def fresh(self, kind: str) -> tuple[str, Path]:
        """A newly ingested store of `kind` and an empty upload folder for it."""
        self.n += 1
        d = self.work / f"{kind}-{self.n}"
        url = f"embedded://{d}/store" if kind == "embedded" else f"pgserver://{self.work}/pgdata?table=rel_{self.n}"
        with contextlib.redirect_stdout(io.StringIO()):  # its report and (-q) its notes are noise here
            self.cli(["-q", "catalog", "ingest", "--model", self.model, "--store", url, "--catalog", self.catalog])
        return url, d / "uploads"

    def attrs(self, i: int, **extra) -> str:
        r = self.rows[i % len(self.rows)]
        return json.dumps({**{f: r[f] for f in FIELDS if r.get(f)}, "year": 2018, **extra})

    def image(self, i: int) -> tuple[str, bytes, str]:
        return ("p.jpg", self.images[i % len(self.images)], "image/jpeg")

    def server(self, url: str, uploads: Path, *extra: str) -> Server:
        return Server(
            self.model, url, self.catalog, uploads, "--auth-file", str(self.auth), *extra, cache_dir=self.args.cache_dir
        ).started()

    # --- 1. bad input + 5. auth (in-process, the same app code) ------------------------------------------
    def bad_inputs(self, url: str, uploads: Path) -> dict:
        from fastapi.testclient import TestClient

        from lookalike.retrieval.stores import open_store
        from lookalike.service.app import ServiceSettings, create_app

        app = create_app(
            ServiceSettings(
                checkpoint=self.model,
                store=url,
                catalog=self.catalog,
                upload_dir=str(uploads),
                auth_file=str(self.auth),
                max_upload_mb=0.2,
            )
        )
        c = TestClient(app)
        w = {"Authorization": f"Bearer {self.write}"}
        pid, old = self.rows[0]["id"], self.rows[1]["id"]
        good, img = self.attrs(0), self.image(0)
        big = io.BytesIO()
        from PIL import Image

        Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big, "PNG")
        txt, trunc, huge = (
            ("a.txt", b"plain text", "text/plain"),
            ("c.jpg", self.images[0][:200], "image/jpeg"),
            ("b.png", big.getvalue(), "image/png"),
        )
        ci, tn, se, it = "/api/recommend/customer_input", "/api/recommend/top10_to_new", "/api/search", "/api/items"
        ev = "/api/events"
        cases = [
            ("post", ci, {}),
            ("post", ci, {"data": {"product_id": "nope"}}),
            ("post", ci, {"data": {"product_ids": "nope,nada"}}),
            ("post", ci, {"json": {"history": [{"product_id": pid, "event": "like"}]}}),
            ("post", ci, {"json": {"history": [{"product_id": pid, "ts": "soon"}]}}),
            ("post", ci, {"json": {"history": "all of it"}}),
            ("post", ci, {"data": {"customer_id": "never-seen"}}),
            ("post", ci, {"data": {"product_id": pid, "profile": "tower"}}),
            ("post", ci, {"data": {"product_id": pid, "k": 0}}),
            ("post", ci, {"data": {"product_id": pid, "k": 10**6}}),
            ("post", ci, {"data": {"product_id": pid, "k": "ten"}}),
            ("post", ci, {"data": {"product_id": pid, "diversity": 2}}),
            ("post", ci, {"data": {"product_id": pid, "filters": "{bad"}}),
            ("post", ci, {"data": {"product_id": pid, "filters": "[1]"}}),
            ("post", ci, {"data": {"product_id": pid, "filters": '{"nofield": 1}'}}),
            ("post", ci, {"data": {"product_id": pid, "filters": '{"gender": {"a": 1}}'}}),
            ("post", ci, {"files": {"image": txt}}),
            ("post", ci, {"files": {"image": trunc}}),
            ("post", ci, {"files": {"image": huge}}),
            ("post", ci, {"files": {"image": ("e.jpg", b"", "image/jpeg")}}),
            ("post", tn, {"data": {"product_ids": "nope,nada"}}),
            ("post", tn, {"data": {"product_ids": pid, "sales": "{}"}}),
            ("post", tn, {"data": {"sales": "not json"}}),
            ("post", tn, {"data": {"sales": '{"x": "many"}'}}),
            ("post", tn, {"data": {"fraction": 0}}),
            ("post", tn, {"data": {"fraction": 1.5}}),
            ("post", tn, {"data": {"limit": 0}}),
            ("post", tn, {"data": {"merged_k": 10**4}}),
            ("post", tn, {"files": {"sales_csv": ("s.csv", b"a,b\n1,2\n", "text/csv")}}),
            ("post", tn, {"files": {"sales_csv": ("s.csv", b"id,units\nX,lots\n", "text/csv")}}),
            ("post", tn, {"files": {"sales_csv": ("s.csv", b"\xff\xfe\x00bad", "text/csv")}}),
            ("post", tn, {"files": [("images", txt)]}),
            ("post", tn, {"data": {"product_ids": ",".join(["x"] * 201)}}),
            ("post", se, {}),
            ("post", se, {"data": {"attributes": "{", "k": 3}}),
            ("post", se, {"data": {"attributes": "[]"}}),
            ("post", se, {"data": {"attributes": "{}"}}),
            ("post", se, {"data": {"attributes": '{"shape": "round"}'}}),
            ("post", se, {"data": {"attributes": '{"gender": true}'}}),
            ("post", se, {"data": {"attributes": '{"gender": {"x": 1}}'}}),
            ("post", se, {"data": {"text": "   "}}),
            ("post", se, {"data": {"text": "shirt", "attributes": good}}),
            ("post", se, {"files": {"image": txt}}),
            ("post", se, {"data": {"text": "shirt", "filters": '{"nofield": 1}'}}),
            ("get", it, {"params": {"limit": 0}}),
            ("get", it, {"params": {"offset": -1}}),
            ("get", it, {"params": {"limit": "x"}}),
            ("get", f"{it}/nope", {}),
            ("get", f"{it}/nope/image", {}),
            ("post", it, {"headers": w, "data": {"product_id": "n1", "attributes": good}}),
            ("post", it, {"headers": w, "data": {"product_id": "n1"}, "files": {"image": img}}),
            ("post", it, {"headers": w, "data": {"product_id": "n1", "attributes": "{bad"}, "files": {"image": img}}),
            ("post", it, {"headers": w, "data": {"product_id": "n1", "attributes": "{}"}, "files": {"image": img}}),
            (
                "post",
                it,
                {
                    "headers": w,
                    "data": {"product_id": "n1", "attributes": '{"is_new": "x", "gender": "Men"}'},
                    "files": {"image": img},
                },
            ),
            (
                "post",
                it,
                {
                    "headers": w,
                    "data": {"product_id": "n1", "attributes": '{"gender": ["Men"]}'},
                    "files": {"image": img},
                },
            ),
            (
                "post",
                it,
                {
                    "headers": w,
                    "data": {"product_id": "n1", "attributes": '{"gender": {"a": 1}}'},
                    "files": {"image": img},
                },
            ),
            ("post", it, {"headers": w, "data": {"product_id": "n1", "attributes": good}, "files": {"image": txt}}),
            ("post", it, {"headers": w, "data": {"product_id": "n1", "attributes": good}, "files": {"image": trunc}}),
            ("post", it, {"headers": w, "data": {"product_id": "n1", "attributes": good}, "files": {"image": huge}}),
            (
                "post",
                it,
                {"headers": w, "data": {"product_id": "../etc/x", "attributes": good}, "files": {"image": img}},
            ),
            (
                "post",
                it,
                {"headers": w, "data": {"product_id": "a" * 300, "attributes": good}, "files": {"image": img}},
            ),
            ("post", it, {"headers": w, "data": {"product_id": " ", "attributes": good}, "files": {"image": img}}),
            ("post", it, {"headers": w, "data": {"product_id": pid, "attributes": good}, "files": {"image": img}}),
            ("put", f"{it}/nope", {"headers": w, "data": {"attributes": good}}),
            ("put", f"{it}/{old}", {"headers": w, "data": {"attributes": "{bad"}}),
            ("put", f"{it}/{old}", {"headers": w, "data": {"attributes": '{"shape": 1}'}}),
            ("put", f"{it}/{old}", {"headers": w, "data": {"attributes": good}, "files": {"image": txt}}),
            ("put", f"{it}/{old}", {"headers": w}),
            ("delete", f"{it}/nope", {"headers": w}),
            *[("post", ev, {"headers": w, "json": {"events": [e]}}) for e in self.bad_events(pid)],
            ("post", ev, {"headers": w, "json": {"events": []}}),
            ("post", ev, {"headers": w, "json": {"events": [self.event(0, pid)] * 1001}}),
            ("post", ev, {"headers": w, "content": b"{not json"}),
            ("post", ev, {"headers": {**w, "Content-Type": "application/json"}, "content": b" " * (10 * 2**20)}),
        ]
        store = open_store(url)
        before = (
            store.ids(),
            [it.metadata for it in store.get_many(store.ids())],
            sorted(p.name for p in uploads.iterdir()),
            app.state.service.events.stored(),
        )
        statuses, causes = [], 0
        for method, path, kw in cases:
            r = getattr(c, method)(path, **kw)
            statuses.append(r.status_code)
            detail = (
                r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
            )
            causes += 400 <= r.status_code < 500 and bool(detail) and len(json.dumps(detail)) > 10
        store = open_store(url)
        after = (
            store.ids(),
            [it.metadata for it in store.get_many(store.ids())],
            sorted(p.name for p in uploads.iterdir()),
            app.state.service.events.stored(),
        )
        # auth: every write endpoint, without a token, with a wrong one and with a read-only one
        refused = tried = 0
        writes = [
            ("post", it, {"data": {"product_id": "a1", "attributes": good}, "files": {"image": img}}),
            ("put", f"{it}/{old}", {"data": {"attributes": good}}),
            ("delete", f"{it}/{old}", {}),
            ("post", "/api/events", {"json": {"events": [self.event(0, pid)]}}),
        ]
        for method, path, kw in writes:
            for headers, want in (
                ({}, 401),
                ({"Authorization": "Bearer wrong-token"}, 401),
                ({"Authorization": f"Bearer {self.read}"}, 403),
            ):
                tried += 1
                refused += getattr(c, method)(path, headers=headers, **kw).status_code == want
        final = open_store(url)
        unchanged = final.ids() == after[0] and [i.metadata for i in final.get_many(final.ids())] == after[1]
        return {
            "kinds": len(cases),
            "4xx": sum(400 <= s < 500 for s in statuses),
            "4xx_with_cause": causes,
            "5xx": sum(s >= 500 for s in statuses),
            "2xx": sum(s < 300 for s in statuses),
            "written": int(before != after),
            "statuses": dict(sorted({str(s): statuses.count(s) for s in statuses}.items())),
            "auth_tried": tried,
            "auth_refused": refused,
            "auth_store_unchanged": unchanged,
            "write_endpoints": len(writes),
        }

    @staticmethod
    def event(i: int, pid: str, **extra) -> dict:
        return {
            "event_id": f"e-{i}",
            "customer_id": f"c-{i % 97}",
            "type": "click",
            "product_id": pid,
            "ts": "2026-01-01T00:00:00Z",
            **extra,
        }

    def bad_events(self, pid: str) -> list:
        """One event of each kind the API must reject (each alone in its batch: answered 422, nothing stored)."""
        e = self.event(0, pid)
        return [
            {**e, "product_id": "no-such-product"},
            {**e, "ts": "2999-01-01T00:00:00Z"},
            {**e, "ts": "yesterday"},
            {**e, "ts": 1700000000},
            {**e, "type": "like"},
            {k: v for k, v in e.items() if k != "event_id"},
            {**e, "customer_id": "x" * 300},
            "an event",
        ]

    # --- 6. events: a steady rate with duplicates, then kill -9 during bursts --------------------------
    def events(self, url: str, uploads: Path, rate: float, seconds: float, trials: int) -> dict:
        """`rate` events/s in batches of 50 (5% of each batch repeats an acknowledged event) for `seconds`, then
        `trials` kill -9s of the server during bursts; every acknowledged event must be stored exactly once."""
        import httpx

        from lookalike.recommend.events import open_events
        from lookalike.retrieval.stores import open_store

        w = {"Authorization": f"Bearer {self.write}"}
        ids = [r["id"] for r in self.rows]
        rng = random.Random(1)
        acked: list[str] = []
        serial = 0
        latencies: list[float] = []

        def batch() -> list[dict]:
            nonlocal serial
            out = []
            for _ in range(50):
                if acked and rng.random() < 0.05:
                    out.append(self.event(0, ids[0]) | {"event_id": rng.choice(acked)})
                else:
                    serial += 1
                    out.append(self.event(serial, ids[serial % len(ids)]) | {"event_id": f"r-{serial}"})
            return out

        srv = drained(self.server(url, uploads))
        sent = dups = 0
        t0 = time.perf_counter()
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            n = 0
            while time.perf_counter() - t0 < seconds:
                due = t0 + n * 50 / rate
                if (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
                b = batch()
                t = time.perf_counter()
                r = c.post("/api/events", headers=w, json={"events": b})
                latencies.append(time.perf_counter() - t)
                n += 1
                if r.status_code == 200:
                    res = r.json()
                    sent += len(b)
                    dups += res["duplicates"]
                    acked.extend(e["event_id"] for e in b)
        elapsed = time.perf_counter() - t0
        srv.kill()
        steady = len(set(acked))
        killed_acked: list[str] = []
        for _ in range(trials):
            srv = drained(self.server(url, uploads))
            stop = threading.Event()
            lock = threading.Lock()

            def burst(srv: Server = srv, stop: threading.Event = stop, lock=lock) -> None:
                with httpx.Client(base_url=srv.url, timeout=30) as c:
                    while True:
                        if stop.is_set():
                            return
                        with lock:
                            b = batch()
                        try:
                            r = c.post("/api/events", headers=w, json={"events": b})
                        except httpx.HTTPError:
                            return
                        if r.status_code == 200:
                            with lock:
                                killed_acked.extend(e["event_id"] for e in b)

            threads = [threading.Thread(target=burst) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.0))
            srv.kill()
            stop.set()
            for t in threads:
                t.join(60)
        store = open_store(url)
        log = open_events(store)
        every = sorted(set(acked) | set(killed_acked))
        stored = log.count_stored(every)
        counted = log.kpi()["events"]
        total = log.stored()
        log.close()
        lat = np.array(latencies) * 1000
        return {
            "rate_asked": rate,
            "seconds": round(elapsed, 1),
            "events_sent": sent,
            "events_per_s": round(sent / elapsed, 1),
            "duplicates_answered": dups,
            "batch_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "batch_p95_ms": round(float(np.percentile(lat, 95)), 2),
            "steady_distinct_acked": steady,
            "kill_trials": trials,
            "acked_during_kills": len(set(killed_acked)),
            "acked_total": len(every),
            "acked_but_lost": len(every) - stored,
            "stored_rows": total,
            "counters_equal_rows": counted == total,
        }

    # --- 3. concurrency ----------------------------------------------------------------------------
    def concurrency(self, url: str, uploads: Path) -> dict:
        import httpx

        srv = self.server(url, uploads)
        w = {"Authorization": f"Bearer {self.write}"}
        target = self.rows[2]["id"]
        try:
            with httpx.Client(base_url=srv.url, timeout=120) as c, ThreadPoolExecutor(24) as pool:

                def add(i):
                    r = c.post(
                        "/api/items",
                        headers=w,
                        data={"product_id": f"c-{i}", "attributes": self.attrs(i), "text": f"add {i}"},
                        files={"image": self.image(i)},
                    )
                    return ("add", i, r.status_code)

                def search(i):
                    return ("search", i, c.post("/api/search", data={"text": f"shirt {i}", "k": 5}).status_code)

                def update(i):
                    r = c.put(
                        f"/api/items/{target}",
                        headers=w,
                        data={"attributes": self.attrs(2), "text": f"update {i}"},
                        files={"image": self.image(i)},
                    )
                    return ("update", i, r.status_code)

                jobs = [pool.submit(f, i) for i in range(100) for f in (add, search)] + [
                    pool.submit(update, i) for i in range(20)
                ]
                out = [j.result() for j in jobs]
        finally:
            srv.stop()
        from lookalike.retrieval.stores import open_store

        store = open_store(url)
        acked_adds = [i for kind, i, s in out if kind == "add" and s == 201]
        lost = sum(
            1 for i in acked_adds if (it := store.get(f"c-{i}")) is None or it.metadata.get("name") != f"add {i}"
        )
        final = store.get(target)
        acked_updates = {f"update {i}" for kind, i, s in out if kind == "update" and s == 200}
        no_image = sum(not Path(it.metadata["image"]).is_file() for it in store.get_many(store.ids()))
        return {
            "adds_acked": len(acked_adds),
            "searches_ok": sum(k == "search" and s == 200 for k, _, s in out),
            "updates_acked": len(acked_updates),
            "lost_adds": lost,
            "lost_updates": int(final is None or final.metadata.get("name") not in acked_updates),
            "rows_without_image": no_image,
            "leftover_images": len([p for p in uploads.iterdir() if not p.name.startswith(".")])
            - len([i for i in store.get_many(store.ids()) if Path(i.metadata["image"]).parent == uploads]),
        }

    # --- 4. kill -9 ----------------------------------------------------------------------------------
    def kills(self, url: str, uploads: Path, trials: int) -> dict:
        import httpx

        from lookalike.retrieval.stores import open_store

        w = {"Authorization": f"Bearer {self.write}"}
        rng = random.Random(0)
        allowed: dict[str, set[str]] = {}  # product → the states it may be in (acknowledged, or in flight)
        lost = half = temps = orphans = 0
        serial = 0
        acked_total = [0]
        lock = threading.Lock()
        for trial in range(trials + 1):
            srv = self.server(url, uploads)
            # what the previous kill left, after this start-up's sweep
            temps += len(list(uploads.glob(".upload-*"))) + len(
                list(Path(url[len("embedded://") :]).glob(".store-*")) if url.startswith("embedded") else []
            )
            store = open_store(url)
            items = {it.id: it for it in store.get_many(store.ids())}
            state = {pid: items[pid].metadata.get("name") if pid in items else "deleted" for pid in allowed}
            lost += sum(1 for pid, ok in allowed.items() if state[pid] not in ok)
            allowed = {}
            half += sum(not Path(it.metadata.get("image", "")).is_file() for it in items.values())
            referenced = {str(Path(it.metadata["image"])) for it in items.values()}
            orphans += sum(1 for p in uploads.iterdir() if not p.name.startswith(".") and str(p) not in referenced)
            if trial == trials:
                break
            with httpx.Client(base_url=srv.url, timeout=60) as c:  # load the image encoder before the burst
                c.post("/api/search", files={"image": self.image(0)})
            stop = threading.Event()

            def writer(srv: Server, stop: threading.Event, allowed: dict[str, set[str]]) -> None:
                # this trial's server, stop flag and ledger, passed in rather than read from the loop's variables
                nonlocal serial
                with httpx.Client(base_url=srv.url, timeout=30) as c:
                    while not stop.is_set():
                        with lock:
                            serial += 1
                            i = serial
                        pid, name = f"k-{i}", f"kill {i}"
                        try:
                            r = c.post(
                                "/api/items",
                                headers=w,
                                data={"product_id": pid, "attributes": self.attrs(i), "text": name},
                                files={"image": self.image(i)},
                            )
                        except httpx.HTTPError:
                            return
                        if r.status_code != 201:
                            continue
                        allowed[pid] = {name}
                        acked_total[0] += 1
                        if rng.random() < 0.3:  # some updates and deletes too: in flight, either state is right
                            update = rng.random() < 0.5
                            after = name + " u" if update else "deleted"
                            allowed[pid] = {name, after}
                            try:
                                r = (
                                    c.put(
                                        f"/api/items/{pid}",
                                        headers=w,
                                        files={"image": self.image(i + 7)},
                                        data={"attributes": self.attrs(i), "text": after},
                                    )
                                    if update
                                    else c.delete(f"/api/items/{pid}", headers=w)
                                )
                            except httpx.HTTPError:
                                return
                            allowed[pid] = {after} if r.status_code == 200 else {name}

            threads = [threading.Thread(target=writer, args=(srv, stop, allowed)) for _ in range(8)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.0))
            srv.kill()
            stop.set()
            for t in threads:
                t.join(60)
        # a clean restart keeps the catalogue as it was
        store = open_store(url)
        before = {it.id: it.metadata for it in store.get_many(store.ids())}
        srv.stop()
        srv = self.server(url, uploads)
        import httpx as _h

        with _h.Client(base_url=srv.url, timeout=60) as c:
            total = c.get("/api/items", params={"limit": 1}).json()["total"]
            listed = {}
            for off in range(0, total, 1000):
                for h in c.get("/api/items", params={"offset": off, "limit": 1000}).json()["items"]:
                    listed[h["id"]] = h["attributes"]
        srv.stop()
        same = listed == {k: {f: v for f, v in m.items() if f != "image"} for k, m in before.items()}
        return {
            "trials": trials,
            "acked_but_lost": lost,
            "half_written": half,
            "leftover_temp_files": temps,
            "leftover_unreferenced_images": orphans,
            "products_written": serial,
            "adds_acked": acked_total[0],
            "restart_catalogue_unchanged": same,
            "catalogue_size": len(before),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint (default: train a tiny one in WORK)")
    ap.add_argument("--catalog", help="catalogue the model was trained on (with --model)")
    ap.add_argument("--fashion", default=str(ROOT.parent / "shared/data/fashion-products"))
    ap.add_argument("--cache-dir", help="embedding cache (default $LOOKALIKE_CACHE or ~/.cache/lookalike)")
    ap.add_argument("--work", help="stores, uploads and reports (default: a new temp dir)")
    ap.add_argument("--stores", nargs="+", default=["embedded", "pgvector"], choices=["embedded", "pgvector"])
    ap.add_argument("--kill-trials", type=int, default=10)
    ap.add_argument("--parts", nargs="+", default=["bad", "fuzz", "concurrency", "kill", "events"])
    ap.add_argument("--event-rate", type=float, default=1000.0, help="events/s of the events part (batches of 50)")
    ap.add_argument("--event-seconds", type=float, default=60.0)
    ap.add_argument("--fuzz-examples", type=int, default=10, help="schemathesis examples per operation")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if bool(args.model) != bool(args.catalog):
        ap.error("give --model and --catalog together")
    machine = Machine.start("reliability.py")
    work = Path(args.work or tempfile.mkdtemp(prefix="lookalike-reliability-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, catalog = (args.model, args.catalog) if args.model else tiny_model(work, Path(args.fashion))
    bench = Bench(args, model, catalog, work)
    log(f"model {model}; catalogue {catalog} ({len(bench.rows)} products); work {work}")
    results = {}
    for kind in args.stores:
        res = results[kind] = {}
        if "bad" in args.parts:
            b = res["bad_input"] = bench.bad_inputs(*bench.fresh(kind))
            log(
                f"[{kind}] bad input: {b['kinds']} kinds over every endpoint → {b['4xx_with_cause']} answered 4xx with "
                f"a cause, {b['5xx']} 5xx, {b['2xx']} 2xx; written: {b['written']} (statuses {b['statuses']})"
            )
            log(
                f"[{kind}] auth: {b['auth_refused']} of {b['auth_tried']} write requests refused "
                f"({b['write_endpoints']} write endpoints × no token / wrong token / read-only token); store "
                f"unchanged: {b['auth_store_unchanged']}"
            )
        if "fuzz" in args.parts:
            url, uploads = bench.fresh(kind)
            srv = bench.server(url, uploads)
            try:
                f = res["schemathesis"] = schemathesis(
                    srv.url, args.fuzz_examples, work / f"{kind}-{bench.n}", {"Authorization": f"Bearer {bench.write}"}
                )
            finally:
                srv.stop()
            log(
                f"[{kind}] schemathesis ({args.fuzz_examples} examples/operation, write token): {f['requests']} "
                f"requests, {f['5xx']} answered 5xx (exit {f['exit_code']}, {f['seconds']} s)"
            )
        if "concurrency" in args.parts:
            cc = res["concurrency"] = bench.concurrency(*bench.fresh(kind))
            log(
                f"[{kind}] concurrency: {cc['adds_acked']}/100 adds, {cc['searches_ok']}/100 searches, "
                f"{cc['updates_acked']}/20 updates of one id acknowledged → lost adds {cc['lost_adds']}, lost updates "
                f"{cc['lost_updates']}, rows without image {cc['rows_without_image']}, leftover images "
                f"{cc['leftover_images']}"
            )
        if "kill" in args.parts:
            k = res["kill9"] = bench.kills(*bench.fresh(kind), args.kill_trials)
            log(
                f"[{kind}] kill -9: {k['trials']} trials, {k['products_written']} adds attempted, {k['adds_acked']} "
                f"acknowledged (some then updated or deleted) → acknowledged-but-lost "
                f"{k['acked_but_lost']}, half-written {k['half_written']}, leftover temp files "
                f"{k['leftover_temp_files']}, unreferenced images {k['leftover_unreferenced_images']}; restart → "
                f"catalogue of {k['catalogue_size']} unchanged: {k['restart_catalogue_unchanged']}"
            )
        if "events" in args.parts:
            e = res["events"] = bench.events(*bench.fresh(kind), args.event_rate, args.event_seconds, args.kill_trials)
            log(
                f"[{kind}] events: asked {e['rate_asked']:g}/s in batches of 50 with 5% duplicates for "
                f"{e['seconds']} s → {e['events_sent']} sent ({e['events_per_s']}/s), "
                f"{e['duplicates_answered']} answered as duplicates, batch p50 {e['batch_p50_ms']} / p95 "
                f"{e['batch_p95_ms']} ms; kill -9 during bursts: "
                f"{e['kill_trials']} trials, {e['acked_during_kills']} acknowledged → acknowledged-but-lost "
                f"{e['acked_but_lost']} of {e['acked_total']}; counters equal the stored rows: "
                f"{e['counters_equal_rows']}"
            )
    results["machine"] = machine.finish()
    (work / "reliability.json").write_text(json.dumps(results, indent=2))
    log(f"done in {time.perf_counter() - t0:.0f} s; wrote {work / 'reliability.json'}")


if __name__ == "__main__":
    main()
