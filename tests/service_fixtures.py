"""A tiny trained model and a small real catalogue, built once per test run for the service tests.

The catalogue is a styles.csv of every 330th fashion product (about 120, old and new) beside a link
to the real image folder. The model is trained on it by the real main job (`run_main`) with small
images for one epoch (the service tests check mechanics, not quality); the store is filled through
the CLI. The first test process to need the model trains it under a file lock in the run's scratch
folder (see conftest); the other xdist workers wait for it and load the same files.
"""

from __future__ import annotations

import csv
import fcntl
import functools
import json
import os
import shutil
import time
import warnings
from pathlib import Path

FASHION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-products"


def every_nth_product(out: Path, n: int) -> list[dict]:
    """A catalogue of every n-th real product that has its photo (styles.csv + a link to the image folder)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").symlink_to(FASHION / "images")
    with (
        open(FASHION / "styles.csv", newline="", encoding="utf-8") as f,
        open(out / "styles.csv", "w", newline="", encoding="utf-8") as g,
    ):
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames)
        writer.writeheader()
        rows = [r for i, r in enumerate(reader) if i % n == 0 and (FASHION / "images" / f"{r['id']}.jpg").exists()]
        writer.writerows(rows)
    return rows


@functools.cache
def trained() -> dict:
    root = Path(os.environ["LOOKALIKE_TEST_RUN"]) / "service-model"
    root.mkdir(exist_ok=True)
    done = root / "trained.json"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            done_tmp = root / "trained.json.tmp"
            done_tmp.write_text(json.dumps(_train(root)))
            os.replace(done_tmp, done)
    t = json.loads(done.read_text())
    return {"root": root, "checkpoint": t["checkpoint"], "catalog": root / "catalog", "rows": t["rows"]}


def _train(root: Path) -> dict:
    from lookalike.config import RunConfig
    from lookalike.pipeline import run_main

    cat = root / "catalog"
    shutil.rmtree(cat, ignore_errors=True)  # what a process that failed here left
    rows = every_nth_product(cat, 330)
    cfg = RunConfig.model_validate(
        {
            "out_dir": str(root / "run"),
            "data": {"catalog": str(cat)},
            "train": {"epochs": 1, "batch_size": 64},
            "eval": {"sample_queries": 0},
            "encoder": {"projection": "center", "image_size": [64, 48], "runtime": "torch"},
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_main(cfg, progress=False)
    return {"checkpoint": summary["checkpoint"], "rows": rows}


def ingest(store_url: str) -> None:
    from lookalike.cli import main

    t = trained()
    main(
        [
            "catalog",
            "ingest",
            "--model",
            t["checkpoint"],
            "--store",
            store_url,
            "--catalog",
            str(t["catalog"]),
            "--no-progress",
        ]
    )


def make_app(store_url: str, tmp: Path, ready: bool = True, **settings):
    """The app on a store; with `ready`, once its background thread has computed the first catalogue
    statistics (so tests of figures do not race it; the tests of that wait pass ready=False)."""
    from lookalike.service.app import ServiceSettings, create_app

    t = trained()
    app = create_app(
        ServiceSettings(
            checkpoint=t["checkpoint"],
            store=store_url,
            catalog=str(t["catalog"]),
            upload_dir=str(tmp / "uploads"),
            **settings,
        )
    )
    if ready:
        wait_for(lambda: app.state.service.stats.latest is not None, "the first catalogue statistics")
    return app


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.02)
