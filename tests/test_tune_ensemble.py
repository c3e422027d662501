"""After a `lookalike tune` study: a study finished by one `tune --no-final` call, reopened by another with
`--ensemble K`, runs no trial again and averages its best trials into `DIR/ensemble.pt` (validated, then tested
once); every trial writes TensorBoard event files as `train` does; the study's time counts every process."""

from __future__ import annotations

import json
import shutil

import pytest
from test_tune import CONFIG, SMALL, _files

from lookalike.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _scalars(tb) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def study(fashion_subset, tmp_path_factory, one_thread):
    """Three 2-epoch trials (no pruning: all complete) run by a `--no-final` call asking for 5 members."""
    import optuna

    root = tmp_path_factory.mktemp("tune-after")
    cfg, space = _files(root, {**CONFIG, "train": {**CONFIG["train"], "epochs": 2}})
    out = root / "out"
    argv = ["tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space)]
    argv += ["--trials", "3", "--pruner", "none", "--out", str(out)]
    main([*argv, "--no-final", "--ensemble", "5"])
    first = json.loads((out / "tuning_report.json").read_text())
    trials = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    return argv, out, first, trials


def test_no_final_ensemble_takes_the_trials_there_are_and_leaves_test_alone(study):
    _, out, first, trials = study
    e = first["ensemble"]
    assert e["built"] and e["asked"] == 5 and len(e["members"]) == 3 and "3 of the 5" in e["note"]
    ranked = sorted(trials, key=lambda t: (-t.value, t.number))
    assert [m["trial"] for m in e["members"]] == [t.number for t in ranked]
    assert e["test"] is None and "--no-final" in e["test_note"] and not (out / "ensemble").exists()
    assert "default" not in first and "best" not in first


def test_reopened_study_runs_no_trial_and_builds_the_ensemble(study, capsys):
    """The second call (`--ensemble 2`, the after-study protocol) finds the 3 finished trials and runs none."""
    import optuna
    import torch

    from lookalike.config import load_config
    from lookalike.evaluation.evaluate import validator
    from lookalike.evaluation.evaluator import get_metric
    from lookalike.model import LookalikeModel
    from lookalike.pipeline import prepare
    from lookalike.studies.tune import figures

    argv, out, first, before = study
    capsys.readouterr()
    main([*argv, "--ensemble", "2", "--seeds", "1"])
    printed = capsys.readouterr().out
    after = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [(t.number, t.datetime_complete) for t in after] == [(t.number, t.datetime_complete) for t in before]
    r = json.loads((out / "tuning_report.json").read_text())
    e = r["ensemble"]
    top = sorted(before, key=lambda t: (-t.value, t.number))[:2]
    assert e["built"] and [m["trial"] for m in e["members"]] == [t.number for t in top] and "note" not in e
    assert [m["checkpoint"] for m in e["members"]] == [
        str(out / "trials" / f"{t.number:04d}" / "checkpoints" / "best_model.pt") for t in top
    ]
    model, payload = LookalikeModel.load(out / "ensemble.pt")
    assert model.config.tower.name == "ensemble" and len(model.config.tower.members) == 2
    assert payload["ensemble_of"] == [m["checkpoint"] for m in e["members"]] and payload["schema"]
    # Its validation is the trials' own (corrected, own training queries), recomputed from the file.
    cfg = load_config(out / "best_config.json")
    prep = prepare(cfg, progress=False)
    assert torch.equal(model.query_bank["articleType"], prep.data.attributes["articleType"])
    assert get_metric(validator(prep.emb, prep.idx["val"], cfg)(model), cfg.train.val_metric) == pytest.approx(
        e["validation"], abs=1e-9
    )
    # Test, once, as default and best are ranked (hubness-corrected), with the same figures.
    evaluation = json.loads((out / "ensemble" / "evaluation.json").read_text())
    final = json.loads((out / "final" / "results" / "evaluation.json").read_text())
    assert "json_to_image" in evaluation["ranking"]["corrected_tasks"]
    assert evaluation["ranking"] == final["ranking"]
    assert e["test"] == figures(evaluation) and e["test"].keys() == r["best"]["test"].keys()
    assert e["test"] != r["best"]["test"]  # not the best trial's model under another name
    assert f"ensemble of trials {[t.number for t in top]}" in printed
    # Timed over both processes: the trials' seconds (run by the first call) are not this call's.
    s = r["study"]
    assert s["trial_seconds"] > 0 and s["trial_seconds"] == pytest.approx(
        sum(t["seconds"] for t in r["trials"]), abs=0.05
    )
    assert s["trial_seconds"] == first["study"]["trial_seconds"] and s["span_seconds"] >= max(
        t["seconds"] for t in r["trials"]
    )


def test_ensemble_not_built_from_fewer_than_two_checkpoints(study, tmp_path):
    import optuna

    from lookalike.config import load_config
    from lookalike.pipeline import prepare
    from lookalike.studies.tune import study_ensemble

    _, out, _, trials = study
    copy = tmp_path / "out"
    shutil.copytree(out / "trials", copy / "trials")
    kept = max(trials, key=lambda t: t.value).number
    for t in trials:
        if t.number != kept:
            (copy / "trials" / f"{t.number:04d}" / "checkpoints" / "best_model.pt").unlink()
    cfg = load_config(out / "best_config.json")
    loaded = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}")
    e = study_ensemble(loaded, 2, cfg, prepare(cfg, progress=False), copy, test=True)
    assert not e["built"] and "needs 2 trials" in e["reason"] and "2 of them without a checkpoint" in e["reason"]
    assert [m["trial"] for m in e["members"]] == [kept] and len(e["missing_checkpoints"]) == 2
    assert not (copy / "ensemble.pt").exists()


def test_every_trial_writes_tensorboard_scalars(study):
    _, out, _, trials = study
    for t in trials:
        tb = out / "trials" / f"{t.number:04d}" / "tb"
        assert list(tb.glob("events.out.tfevents.*")), tb
        s = _scalars(tb)
        # the pruner's values and the tracker's are the same rows
        assert s["validation/metric"] == pytest.approx(t.intermediate_values, abs=1e-6)
        for tag in ("loss/train", "loss/validation", "optim/lr", "optim/temperature", "similarity/positive"):
            assert sorted(s[tag]) == [1, 2], tag
        assert s["final/best_val_metric"][0] == pytest.approx(t.value, abs=1e-6)
