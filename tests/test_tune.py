"""`lookalike tune` on a tiny real catalogue (200 fashion products, small towers, a few epochs): what it writes,
its protocol (trials see validation only, ranked with the hubness correction; test only after the study), that
`lookalike train --config best_config.json` reproduces the best trial, and that a killed study continues without
running a finished trial again. These check behaviour, not the figures' size (benchmarks/tune.py prints those)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.cli import main
from lookalike.towers.registry import TRAINABLE_TOWERS

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

# The same 200 products at the same size as test_studies.py: one embedding cache.
SMALL = ["--limit", "200", "--image-size", "64", "48", "--no-progress"]
CONFIG = {
    "encoder": {"projection": "pca", "projection_dim": 32},
    "tower": {"field_dim": 16, "hidden_dim": 64, "text_hidden_dim": 64, "coarse_to_fine": {"pyramid_dim": 32}},
    "train": {"epochs": 3, "batch_size": 64, "patience": 100, "train_text": False},
    "eval": {"sample_queries": 0},
}
SPACE = {
    "parameters": {
        "train.lr": {"type": "float", "low": 0.0005, "high": 0.01, "log": True},
        "tower.name": {"type": "categorical", "choices": "@towers"},
        "tower.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "tower.coarse_to_fine.heads": {
            "type": "categorical",
            "choices": [2, 4],
            "when": {"tower.name": ["coarse-to-fine"]},
        },
        "train.scheduler": {"type": "categorical", "choices": ["cosine", "step"]},
    }
}


def _files(root: Path, config: dict = CONFIG, space: dict = SPACE) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cfg.json").write_text(json.dumps(config))
    (root / "space.json").write_text(json.dumps(space))
    return root / "cfg.json", root / "space.json"


@pytest.fixture(scope="module")
def tuned(fashion_subset, tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("tune")
    cfg, space = _files(root)
    out = root / "out"
    argv = ["tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space)]
    main([*argv, "--trials", "4", "--max-epochs", "3", "--pruner", "median", "--seeds", "3", "--out", str(out)])
    return out, json.loads((out / "tuning_report.json").read_text())


def _keys(tree) -> set[str]:
    if isinstance(tree, dict):
        return {str(k) for k in tree} | {k for v in tree.values() for k in _keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in _keys(v)}
    return set()


def test_tune_writes_every_output(tuned):
    out, r = tuned
    assert (out / "study.db").is_file()
    slices = [f"slice_{p}" for p in ("train.lr", "tower.name", "tower.dropout", "train.scheduler")]
    for name in ("history", "parallel_coordinates", "intermediate_values", *slices):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000, name
    for f in ("config.json", "checkpoints/best_model.pt", "results/evaluation.json", "results/training_results.json"):
        assert (out / "final" / f).is_file(), f
    b = r["budget"]
    assert b["complete"] + b["pruned"] == 4 == len(r["trials"]) == b["trials"]
    # The first trial is the base config (what the space can express of it).
    base = {"train.lr": 0.001, "tower.name": "mlp", "tower.dropout": 0.1, "train.scheduler": "cosine"}
    assert r["trials"][0]["params"] == base
    for t in r["trials"]:
        assert t["state"] in ("complete", "pruned") and t["seconds"] > 0
        assert t["epochs_run"] == len(t["validation"]) and 1 <= t["epochs_run"] <= t["epochs_planned"] == 3
        assert ("tower.coarse_to_fine.heads" in t["params"]) == (t["params"]["tower.name"] == "coarse-to-fine")
        assert t["params"]["tower.name"] in TRAINABLE_TOWERS
    assert b["epochs_run"] == sum(t["epochs_run"] for t in r["trials"])
    assert b["epochs_saved_by_pruning"] == sum(3 - t["epochs_run"] for t in r["trials"] if t["state"] == "pruned")
    best = max((t for t in r["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    assert r["best_trial"]["number"] == best["number"] and r["best_trial"]["validation"] == best["value"]
    best_cfg = json.loads((out / "best_config.json").read_text())
    assert best_cfg["train"]["lr"] == best["params"]["train.lr"] and best_cfg["train"]["val_corrected"] is True
    assert best_cfg["tower"]["name"] == best["params"]["tower.name"] and best_cfg["out_dir"] == str(out / "final")


def test_best_config_retrained_reproduces_the_best_trial(tuned, tmp_path):
    """final/ is best_config.json trained again: the same validation figure as the trial that won; and
    `lookalike train --config best_config.json` gives final/'s model again, test figures included."""
    out, r = tuned
    final = json.loads((out / "final" / "results" / "training_results.json").read_text())
    assert final["best_val_metric"] == pytest.approx(r["best_trial"]["validation"], abs=1e-9)
    assert r["best"]["validation"] == final["best_val_metric"]
    main(["train", "--config", str(out / "best_config.json"), "--out", str(tmp_path / "again"), "--no-progress"])
    again = json.loads((tmp_path / "again" / "results" / "training_results.json").read_text())
    assert again["best_val_metric"] == pytest.approx(final["best_val_metric"], abs=1e-9)
    assert again["test_headline"] == final["test_headline"]


def test_trials_see_validation_only_ranked_with_the_correction(tuned):
    import optuna
    import torch

    from lookalike.config import load_config
    from lookalike.evaluation.evaluate import validator
    from lookalike.evaluation.evaluator import get_metric
    from lookalike.model import LookalikeModel
    from lookalike.pipeline import prepare

    out, r = tuned
    split = json.loads((out / "final" / "results" / "split.json").read_text())
    study = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}")
    stored = [{"user": t.user_attrs, "system": t.system_attrs, "params": t.params} for t in study.trials]
    for record in [*r["trials"], *stored]:
        assert not any("test" in k.lower() for k in _keys(record)), record
    for t in r["trials"]:
        assert t["validated_on"] == {"split": "val", "products": len(split["val"])}
    # The best trial's recorded value is its best checkpoint's corrected validation, not its plain cosine one.
    number = r["best_trial"]["number"]
    model, _ = LookalikeModel.load(out / "trials" / f"{number:04d}" / "checkpoints" / "best_model.pt")
    cfg = load_config(out / "best_config.json")
    prep = prepare(cfg, progress=False)
    assert torch.equal(model.query_bank["articleType"], prep.data.attributes["articleType"])  # its own training queries
    corrected = get_metric(validator(prep.emb, prep.idx["val"], cfg)(model), cfg.train.val_metric)
    plain_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"val_corrected": False})})
    plain = get_metric(validator(prep.emb, prep.idx["val"], plain_cfg)(model), cfg.train.val_metric)
    assert corrected == pytest.approx(r["best_trial"]["validation"], abs=1e-9) and corrected != plain


def test_default_and_best_compared_on_test_over_seeds(tuned):
    r = tuned[1]
    s = r["seeds"]
    assert s["seeds"] == [42, 43, 44]
    key = "json_to_image/attribute/hit@10"
    for name in ("default", "best"):
        runs = s["runs"][name]
        assert [x["seed"] for x in runs] == s["seeds"]
        for x in runs:
            ev = json.loads((Path(x["out_dir"]) / "results" / "evaluation.json").read_text())
            assert ev["seed"] == x["seed"] and x["test"][key] == round(
                ev["json_to_image"]["attribute"]["all"]["hit@10"], 4
            )
        assert r[name]["test"] == runs[0]["test"]
    pr = s["paired"][key]
    diffs = np.array(pr["best"]) - np.array(pr["default"])
    assert pr["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-4)
    assert pr["p"] is None or 0 <= pr["p"] <= 1
    assert r["best"]["validation_in_study"] == r["best_trial"]["validation"]


def _states(db: Path) -> tuple[list[str], int]:
    """Trial states, and the epochs the running trial has reported (0 when none runs)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
        states = [s for (s,) in c.execute("SELECT state FROM trials ORDER BY number")]
        (reported,) = c.execute(
            "SELECT COUNT(*) FROM trial_intermediate_values v JOIN trials t ON t.trial_id = v.trial_id "
            "WHERE t.state = 'RUNNING'"
        ).fetchone()
    return states, reported


def test_killed_study_continues_without_rerunning_finished_trials(fashion_subset, tmp_path):
    import optuna

    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 25}}
    cfg, space = _files(tmp_path, config)
    out = tmp_path / "out"
    argv = [
        "tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space),
        "--trials", "3", "--pruner", "none", "--heartbeat", "1", "--no-final", "--out", str(out),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", *argv], env=env, stderr=subprocess.DEVNULL)
    db, deadline = out / "study.db", time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if db.exists():
                try:
                    states, reported = _states(db)
                except sqlite3.OperationalError:  # the schema is being created
                    states, reported = [], 0
                if "COMPLETE" in states and "RUNNING" in states and reported >= 2:
                    break
            assert proc.poll() is None, "tune ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no trial was running after a complete one")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    storage = f"sqlite:///{db}"
    before = {t.number: t for t in optuna.load_study(study_name="lookalike-tune", storage=storage).trials}
    killed = next(t for t in before.values() if t.state.name == "RUNNING")
    done_before = {n: t for n, t in before.items() if t.state.name == "COMPLETE"}
    time.sleep(2.5)  # past the killed trial's grace period (two heartbeats)

    main(argv)
    after = {t.number: t for t in optuna.load_study(study_name="lookalike-tune", storage=storage).trials}
    for n, t in done_before.items():  # not run again: the same values, finished at the same moment
        assert after[n].state.name == "COMPLETE" and after[n].datetime_complete == t.datetime_complete
        assert after[n].intermediate_values == t.intermediate_values
    assert after[killed.number].state.name == "FAIL"
    retry = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == killed.params
    assert retry[0].user_attrs["resumed_from_trial"] == killed.number
    for epoch, value in killed.intermediate_values.items():  # its epochs before the kill kept, not retrained
        assert retry[0].intermediate_values[epoch] == value
    assert sorted(retry[0].intermediate_values) == list(range(1, 26))
    finished = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    trial_dirs = sorted(p.name for p in (out / "trials").iterdir())
    assert len(trial_dirs) == len(after) - 1  # the retry trained in the killed trial's folder

    main(argv)  # the study already holds its trials: nothing runs
    assert len(optuna.load_study(study_name="lookalike-tune", storage=storage).trials) == len(after)
    report = json.loads((out / "tuning_report.json").read_text())
    assert report["budget"]["complete"] == 3 and report["budget"]["fail"] == 1
    assert next(t for t in report["trials"] if t["number"] == retry[0].number)["resumed"] is True
