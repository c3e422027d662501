"""Core benchmark: prints the speed and quality figures of the core issue's targets.

    python benchmarks/core.py                      # embedder vs bare forward, cold + warm main job, quality table
    python benchmarks/core.py --sizes 128x96 224x176   # also: what each backbone input size costs and buys

The main job runs as a subprocess (`lookalike train`), so its wall time and peak memory are those a
user sees; the cold run uses a fresh, empty embedding cache.
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
    chunks, so a load that comes and goes on the machine hits both alike."""
    from PIL import Image

    from lookalike.catalogue import load_catalogue
    from lookalike.encoders import create_image_encoder
    from lookalike.encoders.embedder import embed_images

    cat = load_catalogue(catalog)
    refs = [p.image for p in cat.products[:n]]
    with tempfile.TemporaryDirectory() as tmp:
        enc = create_image_encoder("efficientnet-lite0", image_size=size, cache_dir=Path(tmp))
        arrays = [enc.preprocess(Image.open(r.path)) for r in refs]
        # Same images for both: those of the catalogue's usual size, so bare batches stack.
        common = Counter(a.shape for a in arrays).most_common(1)[0][0]
        keep = [i for i, a in enumerate(arrays) if a.shape == common]
        refs, arrays = [refs[i] for i in keep], [arrays[i] for i in keep]
        n = len(refs)
        enc.forward(np.stack(arrays[:64]))  # warm-up
        bare_s = embed_s = 0.0
        embedded = 0
        chunk = -(-n // rounds)
        for r, s0 in enumerate(range(0, n, chunk)):
            part = slice(s0, min(n, s0 + chunk))
            t = time.perf_counter()
            for s in range(part.start, part.stop, 64):
                enc.forward(np.stack(arrays[s : min(s + 64, part.stop)]))
            bare_s += time.perf_counter() - t
            res = embed_images(refs[part], enc, Path(tmp) / f"cache{r}", 64, progress=False)
            embed_s += res.seconds
            embedded += res.computed
        bare, full = n / bare_s, embedded / embed_s
        # The runtime choice: eager PyTorch on the same batches (fewer images: it is much slower).
        torch_enc = create_image_encoder("efficientnet-lite0", image_size=size, runtime="torch")
        m = min(n, 512)
        t = time.perf_counter()
        for s in range(0, m, 64):
            torch_enc.forward(np.stack(arrays[s : min(s + 64, m)]))
        torch_bare = m / (time.perf_counter() - t)
    return {
        "images": n,
        "input_size": size,
        "rounds": rounds,
        "bare_forward_img_s": round(bare, 1),
        "embedder_img_s": round(full, 1),
        "ratio": round(full / bare, 3),
        "torch_bare_forward_img_s": round(torch_bare, 1),
    }


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
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    env = {**os.environ, "BENCH_LOG_DIR": str(out)}

    from lookalike.config import EncoderConfig

    e = embedder_vs_bare(args.catalog, args.images, tuple(EncoderConfig().image_size))
    report["embedder"] = e
    print(
        f"embedder vs bare forward ({e['images']} images, {e['input_size'][0]}×{e['input_size'][1]}, ONNX Runtime): "
        f"bare {e['bare_forward_img_s']} img/s, embedder {e['embedder_img_s']} img/s = {e['ratio']:.1%}; "
        f"eager PyTorch bare forward {e['torch_bare_forward_img_s']} img/s",
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
    if (out / "main/results/evaluation.json").exists():
        ev = json.loads((out / "main/results/evaluation.json").read_text())
        tr = json.loads((out / "main/results/training_results.json").read_text())
        report["timings"] = tr["timings"]
        print(f"second-run timings: {json.dumps(tr['timings'])}")
        print(
            f"\nquality on the test split ({ev['json_to_image']['gallery_size']} products never seen in training, whole gallery;"
            f" JSON and text ranked with hubness weight {ev['ranking']['hubness_weight']}, plain cosine in brackets):"
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
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
