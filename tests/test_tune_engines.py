"""`lookalike tune` beyond one process: two processes sharing one study in a real PostgreSQL (pgserver), and the
trials run by Ray Tune (OptunaSearch + ASHA) on a real local 2-CPU Ray, with the local engine's outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_servers import pgdata
from test_tune import CONFIG, SMALL, _files

from lookalike.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]


def _env() -> dict[str, str]:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def test_two_processes_share_one_study_in_postgresql(fashion_subset, tmp_path):
    import optuna

    from lookalike.retrieval.stores import start_pgserver

    url = start_pgserver(pgdata()).get_uri()  # this process holds the server; the two tune processes connect
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 15}}
    cfg, space = _files(tmp_path, config)
    name = f"shared-{os.getpid()}"
    argv = ["tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space)]
    argv += ["--trials", "6", "--pruner", "none", "--no-final", "--storage", url, "--study-name", name]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", *argv, "--out", str(tmp_path / d)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-2000:]
    storage = "postgresql+psycopg://" + url.split("://", 1)[1]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) >= 6 and all(t.state.name == "COMPLETE" for t in trials)
    ran = {d: {int(p.name) for p in (tmp_path / d / "trials").iterdir()} for d in ("a", "b")}
    assert ran["a"] and ran["b"], f"one process ran every trial: {ran}"  # both did work
    assert not ran["a"] & ran["b"] and ran["a"] | ran["b"] == {t.number for t in trials}
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == len(trials)  # no point proposed twice
    for d in ("a", "b"):  # each process reports the whole shared study
        report = json.loads((tmp_path / d / "tuning_report.json").read_text())
        assert sorted(t["number"] for t in report["trials"]) == sorted(t.number for t in trials)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray of 2 CPUs, as tests/test_ray_engine.py starts one."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def test_ray_tune_engine_writes_the_same_outputs(fashion_subset, tmp_path, ray_address):
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 6}}
    cfg, space = _files(tmp_path, config)
    out = tmp_path / "out"
    argv = ["tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space)]
    main([*argv, "--engine", "ray", "--address", ray_address, "--trials", "4", "--seeds", "1", "--out", str(out)])
    r = json.loads((out / "tuning_report.json").read_text())
    assert r["study"]["engine"] == "ray" and len(r["trials"]) == 4
    base = {"train.lr": 0.001, "tower.name": "mlp", "tower.dropout": 0.1, "train.scheduler": "cosine"}
    assert base in [t["params"] for t in r["trials"]]  # the base config is one of Ray's trials, as the local engine's
    b = r["budget"]
    assert b["complete"] + b["pruned"] == 4 and b["complete"] >= 1
    for t in r["trials"]:
        assert set(t["validation"]) == {str(e) for e in range(1, t["epochs_run"] + 1)}
        assert t["epochs_planned"] == 6 and (t["state"] == "pruned") == (t["epochs_run"] < 6)
        assert t["validated_on"]["split"] == "val"
    best = max((t for t in r["trials"] if t["state"] == "complete"), key=lambda t: t["value"])
    assert r["best_trial"]["number"] == best["number"]
    final = json.loads((out / "final" / "results" / "training_results.json").read_text())
    assert final["best_val_metric"] == pytest.approx(best["value"], abs=1e-9)  # the best trial, trained again
    assert (out / "plots" / "history.png").is_file() and (out / "best_config.json").is_file()
    assert r["default"]["test"] and r["best"]["test"]


def test_interrupted_ray_study_is_restored_without_rerunning_finished_trials(fashion_subset, tmp_path, ray_address):
    """Ctrl+C (SIGINT) while Ray Tune runs the third of four trials: Ray saves its state and `tune` stops with an
    error; the same command again continues through `Tuner.restore`, runs the rest and none that had finished."""
    import signal
    import time

    import optuna
    from ray.tune import ExperimentAnalysis

    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 12}}
    cfg, space = _files(tmp_path, config)
    out = tmp_path / "out"
    argv = ["tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space)]
    argv += ["--engine", "ray", "--address", ray_address, "--trials", "4", "--no-final", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli", *argv],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    try:
        while len(list((out / "trials").glob("ray-*"))) < 3:  # one trial at a time: the third started, two ended
            assert proc.poll() is None and time.monotonic() < deadline, "tune ended before its third trial"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and "interrupted" in err and "run the same command again" in err, err[-2000:]
    assert not (out / "tuning_report.json").exists()  # no report, no study written from half a run
    before = {t.trial_id: t for t in ExperimentAnalysis(str(out / "ray" / "lookalike-tune")).trials}
    done = {i: t for i, t in before.items() if t.status == "TERMINATED"}
    assert len(done) >= 2 and len(done) < 4  # the third trial was running, or the fourth not yet drawn
    events = {i: sorted((out / "trials" / f"ray-{i}" / "tb").glob("events.*")) for i in before}

    main(argv)  # continued: Tuner.restore
    trials = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    by_id = {Path(t.user_attrs["trial_dir"]).name.removeprefix("ray-"): t for t in trials}
    assert len(by_id) == 4 and set(before) <= set(by_id)
    b = json.loads((out / "tuning_report.json").read_text())["budget"]
    assert b["complete"] + b["pruned"] == 4
    for i, t in done.items():  # kept as they ended: the same last epoch and value, no new TensorBoard run
        last = t.last_result
        assert max(by_id[i].intermediate_values) == last["epoch"] == len(by_id[i].intermediate_values)
        assert by_id[i].intermediate_values[last["epoch"]] == pytest.approx(last["val"], abs=1e-9)
        assert sorted((out / "trials" / f"ray-{i}" / "tb").glob("events.*")) == events[i], i
    for i in set(before) - set(done):  # an interrupted trial ran again, from its first epoch
        assert len(list((out / "trials" / f"ray-{i}" / "tb").glob("events.*"))) == len(events[i]) + 1
