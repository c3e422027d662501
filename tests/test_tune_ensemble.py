"""After a `lookalike tune` study: a study finished by one `tune --no-final` call, reopened by another with
`--ensemble K`, runs no trial again and averages its best trials into `DIR/ensemble.pt` (validated, then tested
once); every trial writes TensorBoard event files as `train` does; the study's time counts every process; and the
dashboard serving the study's final model shows the tuning summary and the image views it trained on (Chromium)."""

from __future__ import annotations

import contextlib
import io
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
    """Three 2-epoch trials (no pruning: all complete; two cached image views an image) run by a `--no-final` call
    asking for 5 members."""
    import optuna

    root = tmp_path_factory.mktemp("tune-after")
    config = {**CONFIG, "train": {**CONFIG["train"], "epochs": 2}, "augment": {"image_views": 2}}
    cfg, space = _files(root, config)
    out = root / "out"
    argv = ["tune", "--config", str(cfg), "--catalog", str(fashion_subset), *SMALL, "--space", str(space)]
    argv += ["--trials", "3", "--pruner", "none", "--out", str(out)]
    main([*argv, "--no-final", "--ensemble", "5"])
    first = json.loads((out / "tuning_report.json").read_text())
    trials = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    return argv, out, first, trials


@pytest.fixture(scope="module")
def reopened(study):
    """The same study reopened by a second call with `--ensemble 2` and the after-study protocol (one seed)."""
    argv, out, _, _ = study
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([*argv, "--ensemble", "2", "--seeds", "1"])
    return printed.getvalue(), json.loads((out / "tuning_report.json").read_text())


def test_no_final_ensemble_takes_the_trials_there_are_and_leaves_test_alone(study):
    _, out, first, trials = study
    e = first["ensemble"]
    assert e["built"] and e["asked"] == 5 and len(e["members"]) == 3 and "3 of the 5" in e["note"]
    ranked = sorted(trials, key=lambda t: (-t.value, t.number))
    assert [m["trial"] for m in e["members"]] == [t.number for t in ranked]
    assert e["test"] is None and "--no-final" in e["test_note"] and not (out / "ensemble").exists()
    assert "default" not in first and "best" not in first


def test_reopened_study_runs_no_trial_and_builds_the_ensemble(study, reopened):
    """The second call (`--ensemble 2`, the after-study protocol) finds the 3 finished trials and runs none."""
    import optuna
    import torch

    from lookalike.config import load_config
    from lookalike.evaluation.evaluate import validator
    from lookalike.evaluation.evaluator import get_metric
    from lookalike.model import LookalikeModel
    from lookalike.pipeline import prepare
    from lookalike.studies.tune import figures

    _, out, first, before = study
    printed, r = reopened
    after = optuna.load_study(study_name="lookalike-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [(t.number, t.datetime_complete) for t in after] == [(t.number, t.datetime_complete) for t in before]
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


@pytest.fixture(scope="module")
def served(study, reopened, fashion_subset, tmp_path_factory):
    """The study's final model serving its 200 products (an embedded store) behind a real uvicorn."""
    import csv
    import socket
    import threading
    import time

    import uvicorn

    from lookalike.service.app import ServiceSettings, create_app

    _, out, _, _ = study
    root = tmp_path_factory.mktemp("tuned-served")
    split = json.loads((out / "final" / "results" / "split.json").read_text())
    ids = {*split["train"], *split["val"], *split["test"]}
    cat = root / "catalog"
    cat.mkdir()
    (cat / "images").symlink_to(fashion_subset / "images")
    with (
        open(fashion_subset / "styles.csv", newline="", encoding="utf-8") as f,
        open(cat / "styles.csv", "w", newline="", encoding="utf-8") as g,
    ):
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames or [])
        writer.writeheader()
        writer.writerows(r for r in reader if r["id"] in ids)
    checkpoint = out / "final" / "checkpoints" / "best_model.pt"
    store = f"embedded://{root}/store"
    main(["catalog", "ingest", "--model", str(checkpoint), "--store", store, "--catalog", str(cat), "--no-progress"])
    app = create_app(
        ServiceSettings(checkpoint=str(checkpoint), store=store, catalog=str(cat), upload_dir=str(root / "uploads"))
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", cat
    srv.should_exit = True
    thread.join(10)


def test_dashboard_shows_the_tuning_summary_and_the_image_views(served, reopened):
    """In Chromium: the training panel's tuning summary (budget, best trial, default vs best vs ensemble on
    validation and test, as the report says) and the augmentation panel's image views, which are the pixels
    training embedded (the same recipe, seed and content key), not the original photo."""
    import io as _io

    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from test_dashboard_browser import CHROMIUM_ARGS

    from lookalike.encoders.cache import bytes_key
    from lookalike.encoders.views import render_view

    url, cat = served
    _, r = reopened
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#tuning-figures")
        b = r["budget"]
        budget = page.inner_text("#tuning-budget")
        assert f"{b['trials']} trials, {b['complete']} complete, {b['pruned']} pruned, {b['fail']} failed" in budget
        assert f"epochs run {b['epochs_run']} of {b['epochs_planned']} planned" in budget
        assert "Served: the best model" in budget
        assert page.inner_text("#tuning-best").startswith(f"best trial {r['best_trial']['number']} ")
        rows = page.eval_on_selector_all(
            "#tuning-figures tr", "rs => rs.map(r => [...r.children].map(c => c.textContent))"
        )
        members = ", ".join(str(m["trial"]) for m in r["ensemble"]["members"])
        assert rows[0] == ["", "default", "best", f"ensemble of trials {members}"]
        table = {row[0]: [float(x) for x in row[1:]] for row in rows[1:]}
        models = (r["default"], r["best"], r["ensemble"])
        assert table["validation"] == pytest.approx([m["validation"] for m in models], abs=5e-5)
        for key in r["best"]["test"]:
            assert table[f"test {key}"] == pytest.approx([m["test"][key] for m in models], abs=5e-5), key
        # The augmentation panel: each sample's two views, loaded as images
        page.eval_on_selector_all("#augmented img", "imgs => imgs.forEach(i => i.scrollIntoView())")
        page.wait_for_function("[...document.querySelectorAll('#augmented .views img')].every(i => i.complete)")
        views = page.eval_on_selector_all(
            "#augmented .views img", "imgs => imgs.map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])"
        )
        samples = len(page.query_selector_all("#augmented > .row"))
        assert samples >= 2 and len(views) == 2 * samples
        src, width, height = views[1]
        pid = src.split("/")[3]
        photo = (cat / "images" / f"{pid}.jpg").read_bytes()
        with Image.open(_io.BytesIO(photo)) as im:
            assert (width, height) == im.size
            expected = np.asarray(render_view(im, bytes_key(photo), 1, 0))
            original = np.asarray(im.convert("RGB"))
        served_view = page.request.get(url + src)
        assert served_view.ok and served_view.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(_io.BytesIO(served_view.body())).convert("RGB"))
        assert np.array_equal(pixels, expected) and not np.array_equal(pixels, original)
        assert page.request.get(url + src.replace("/views/1", "/views/2")).status == 404  # 2 views: 0 and 1
        browser.close()
    assert not errors, errors


def test_tuning_summary_names_the_model_it_describes(study, reopened):
    from lookalike.service.tuning import tuning_summary

    out = study[1]
    assert tuning_summary(out / "ensemble.pt")["served_as"] == "ensemble"
    assert tuning_summary(out / "default" / "checkpoints" / "best_model.pt")["served_as"] == "default"
    assert tuning_summary(out / "trials" / "0000" / "checkpoints" / "best_model.pt") is None  # a trial: no report
