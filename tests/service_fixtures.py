"""A tiny trained model and a small real catalogue, built once per test session for the service tests.

The catalogue is a styles.csv of every 330th fashion product (about 120, old and new) beside a link
to the real image folder. The model is trained on it by the real main job (`run_main`) with small
images for one epoch (the service tests check mechanics, not quality); the store is filled through
the CLI.
"""

from __future__ import annotations

import atexit
import csv
import functools
import shutil
import tempfile
import warnings
from pathlib import Path

FASHION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-products"


def every_nth_product(out: Path, n: int) -> list[dict]:
    """A catalogue of every n-th real product that has its photo (styles.csv + a link to the image folder)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").symlink_to(FASHION / "images")
    with open(FASHION / "styles.csv", newline="", encoding="utf-8") as f, \
            open(out / "styles.csv", "w", newline="", encoding="utf-8") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames)
        writer.writeheader()
        rows = [r for i, r in enumerate(reader) if i % n == 0 and (FASHION / "images" / f"{r['id']}.jpg").exists()]
        writer.writerows(rows)
    return rows


@functools.cache
def trained() -> dict:
    from lookalike.config import RunConfig
    from lookalike.pipeline import run_main

    root = Path(tempfile.mkdtemp(prefix="lookalike-service-test-"))
    atexit.register(shutil.rmtree, root, True)
    cat = root / "catalog"
    rows = every_nth_product(cat, 330)
    cfg = RunConfig.model_validate({
        "out_dir": str(root / "run"), "data": {"catalog": str(cat)},
        "train": {"epochs": 1, "batch_size": 64}, "eval": {"sample_queries": 0},
        "encoder": {"projection": "center", "image_size": [64, 48], "runtime": "torch"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_main(cfg, progress=False)
    return {"root": root, "checkpoint": summary["checkpoint"], "catalog": cat, "rows": rows}


def ingest(store_url: str) -> None:
    from lookalike.cli import main

    t = trained()
    main(["catalog", "ingest", "--model", t["checkpoint"], "--store", store_url, "--catalog", str(t["catalog"]),
          "--no-progress"])


def make_app(store_url: str, tmp: Path, **settings):
    from lookalike.service.app import ServiceSettings, create_app

    t = trained()
    return create_app(ServiceSettings(checkpoint=t["checkpoint"], store=store_url, catalog=str(t["catalog"]),
                                      upload_dir=str(tmp / "uploads"), **settings))
