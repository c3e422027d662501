"""What the dashboard shows of a served model that came from `lookalike tune`, and the augmented image views it
was trained with.

A checkpoint from a study lies where `tune` put it: `DIR/final/checkpoints/best_model.pt` (the best config
retrained), `DIR/default/...` (the base config) or `DIR/ensemble.pt` (the best trials averaged), beside
`DIR/tuning_report.json`. The report is read once, at start-up (`tuning_summary`), and only what the training
panel shows is kept. Serving imports no study: the report is plain JSON.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)


def _same(a: str | Path | None, b: Path) -> bool:
    return a is not None and Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def tuning_summary(checkpoint: str | Path) -> dict[str, Any] | None:
    """The study behind `checkpoint` (trials, budget, best trial, default vs best vs ensemble on validation and
    test), or None when the checkpoint is not one a study's report names."""
    ckpt = Path(checkpoint)
    run_dir = ckpt.resolve().parent.parent
    for report_path in (run_dir.parent / "tuning_report.json", ckpt.resolve().parent / "tuning_report.json"):
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        ensemble = report.get("ensemble") or {}
        served_as = next(
            (
                name
                for name, hit in (
                    ("best", _same((report.get("best") or {}).get("out_dir"), run_dir)),
                    ("default", _same((report.get("default") or {}).get("out_dir"), run_dir)),
                    ("ensemble", _same(ensemble.get("checkpoint"), ckpt)),
                )
                if hit
            ),
            None,
        )
        if served_as is None:
            continue
        try:
            return _summary(report, report_path, served_as)
        except (KeyError, TypeError) as e:  # a report of another version: the panel goes without it
            logger.warning(f"tuning report {report_path} not shown: missing {e}")
            return None
    return None


def _summary(report: dict, path: Path, served_as: str) -> dict[str, Any]:
    b, best_trial, study = report["budget"], report["best_trial"], report["study"]
    ensemble = report.get("ensemble")
    return {
        "report": str(path),
        "served_as": served_as,
        "study": {
            k: study.get(k) for k in ("name", "engine", "pruner", "metric", "seconds", "trial_seconds", "span_seconds")
        },
        "trials": {k: b[k] for k in ("trials", "complete", "pruned", "fail")},
        "epochs": {
            k: b[k]
            for k in (
                "epochs_planned",
                "epochs_run",
                "epochs_saved_by_pruning",
                "epochs_saved_by_pruning_share",
                "epochs_saved_by_early_stopping",
            )
        },
        "best_trial": {k: best_trial[k] for k in ("number", "validation", "params")},
        "default": _figures(report.get("default")),
        "best": _figures(report.get("best")),
        "ensemble": None
        if ensemble is None
        else {
            "built": ensemble["built"],
            "members": [m["trial"] for m in ensemble["members"]],
            **(_figures(ensemble) if ensemble["built"] else {"reason": ensemble["reason"]}),
        },
    }


def _figures(block: dict | None) -> dict[str, Any]:
    """Validation and test figures of one of the report's models (None: not trained, as with --no-final)."""
    if not block:
        return {"validation": None, "test": None}
    return {"validation": block.get("validation"), "test": block.get("test")}


def view_png(image_path: Path, view: int, seed: int) -> bytes:
    """View `view` of a catalogue image, rendered as training rendered it before embedding and caching it (the same
    recipe, keyed by the image's content, the view and the seed): the pixels behind a cached view vector. The
    whole image: the store keeps a product's image path, not a crop box (K-Fashion trains on crops)."""
    from lookalike.encoders.cache import bytes_key
    from lookalike.encoders.views import render_view

    data = image_path.read_bytes()
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        out = io.BytesIO()
        render_view(opened, bytes_key(data), view, seed).save(out, format="PNG")
    return out.getvalue()
