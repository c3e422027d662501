"""The README's "Python API" section, run as written on a small real trained model (service_fixtures)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from service_fixtures import trained

from lookalike.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]  # a trained model


def readme_python_api() -> str:
    section = README.read_text(encoding="utf-8").split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section holds one code block"
    return blocks[0]


def test_readme_python_api_runs_as_written(tmp_path, monkeypatch):
    """The paths the README names exist under a scratch folder (the checkpoint, the catalogue, a photo, the
    store `lookalike catalog ingest` fills), and the code runs there unchanged."""
    t = trained()
    work = tmp_path / "work"
    (work / "runs/fashion-products/checkpoints").mkdir(parents=True)
    (work / "runs/fashion-products/checkpoints/best_model.pt").symlink_to(t["checkpoint"])
    (tmp_path / "shared/data").mkdir(parents=True)
    (tmp_path / "shared/data/fashion-products").symlink_to(t["catalog"])
    pid = t["rows"][3]["id"]
    shutil.copy(t["catalog"] / "images" / f"{pid}.jpg", work / "photo.jpg")
    monkeypatch.chdir(work)
    main(
        [
            "catalog",
            "ingest",
            "--model",
            "runs/fashion-products/checkpoints/best_model.pt",
            "--catalog",
            "../shared/data/fashion-products",
            "--store",
            "runs/service/store",
            "--no-progress",
        ]
    )
    ns: dict = {}
    exec(compile(readme_python_api(), "README.md (Python API)", "exec"), ns)

    n = len(t["rows"])
    assert ns["unknown"] == {} and ns["ignored"] == []
    assert [len(ns["hits"]), len(ns["similar"]), len(ns["top"].ids)] == [10, 5, 10]
    assert ns["similar"][0].id == pid and ns["similar"][0].score == pytest.approx(1.0, abs=1e-4)
    # the catalogue held in memory and the store rank one query alike
    text_hits = ns["catalogue"].search(ns["text"], k=10, corrected=True)
    assert [h.id for h in text_hits] == ns["top"].ids and ns["top"].certified
    np.testing.assert_allclose([h.score for h in text_hits], ns["top"].scores, atol=1e-5)
    ev = ns["evaluation"]
    assert ev["json_to_image"]["n_queries"] == n and (work / "runs/eval/evaluation.json").exists()
