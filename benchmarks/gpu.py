"""GPU and mixed precision on fashion-products (issue 21):

    python benchmarks/gpu.py [--images 2048] [--limit 6000] [--device cuda]

On a machine with a CUDA GPU it prints: EfficientNet-Lite0 embedding throughput (images/s) at fp32 and fp16
on the GPU, the largest difference between the fp32 and fp16 vectors (cosine and max abs, unit vectors), and
one training epoch of the towers on the CPU and on the GPU (fp32, bf16). On a machine without one it says
so in one line and exits 0: nothing here is measured on the CPU alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", default=str(ROOT.parent / "shared/data/fashion-products"))
    p.add_argument("--images", type=int, default=2048, help="images embedded per precision")
    p.add_argument("--limit", type=int, default=6000, help="products in the training-epoch comparison")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(f"gpu.py: no CUDA GPU visible to torch {torch.__version__} on this machine; nothing to measure")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    from machine import Machine, Stopwatch
    from PIL import Image

    from lookalike.catalogue import load_catalogue
    from lookalike.config import RunConfig
    from lookalike.encoders.registry import create_image_encoder
    from lookalike.evaluation.evaluate import validator
    from lookalike.pipeline import new_model, prepare
    from lookalike.training.trainer import train

    machine = Machine.start("gpu.py")
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    cat = load_catalogue(args.catalog)
    enc = create_image_encoder("efficientnet-lite0", runtime="torch")
    arrays = [enc.preprocess(Image.open(p.image.path)) for p in cat.products[: args.images]]
    batches = [np.stack(arrays[s : s + args.batch_size]) for s in range(0, len(arrays), args.batch_size)]
    batches = [b for b in batches if b.shape[1:] == batches[0].shape[1:]]
    vectors = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        model = enc.model.to(device)
        out = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            model(torch.from_numpy(batches[0]).to(device))  # warm-up: kernels, cuDNN autotuning
            torch.cuda.synchronize()
            with Stopwatch() as sw:
                for b in batches:
                    out.append(model(torch.from_numpy(b).to(device)).float().cpu().numpy())
                torch.cuda.synchronize()
        n = sum(len(b) for b in batches)
        vectors[name] = np.concatenate(out)
        print(f"embedding {name}: {n / sw.wall:.1f} images/s ({n} images, batch {args.batch_size}, {sw.wall:.2f} s)")
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (vectors["fp32"], vectors["fp16"]))
    print(
        f"fp32 vs fp16 vectors (unit): lowest cosine {float((a * b).sum(1).min()):.6f}, "
        f"largest absolute difference {float(np.abs(a - b).max()):.2e}"
    )
    cfg = RunConfig.model_validate(
        {"data": {"catalog": args.catalog, "limit": args.limit}, "train": {"epochs": 1, "train_text": False}}
    )
    prep = prepare(cfg, progress=False)
    for dev, precision in (("cpu", "fp32"), (args.device, "fp32"), (args.device, "bf16")):
        run = cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"device": dev, "precision": precision, "threads": 0})}
        )
        model = new_model(run, prep)
        t = time.perf_counter()
        train(
            model,
            prep.data,
            validator(prep.emb, prep.idx["val"], run),
            run.train,
            Path(tempfile.mkdtemp(prefix="lookalike-gpu-")),
            progress=False,
        )
        print(
            f"one epoch (with its validation), {len(prep.data)} training products, {dev} {precision}: "
            f"{time.perf_counter() - t:.2f} s"
        )
    machine.finish()


if __name__ == "__main__":
    main()
