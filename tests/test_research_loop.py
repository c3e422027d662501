"""The research loop around one training run: validation loss, TensorBoard and MLflow tracking, devices and
mixed precision, and ensembles evaluated, searched and served like any checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.cli import main
from lookalike.config import RunConfig
from lookalike.devices import resolve_device
from lookalike.errors import LookalikeError
from lookalike.evaluation.evaluate import evaluate_checkpoint, validator
from lookalike.inference import QueryEncoder
from lookalike.model import LookalikeModel, build_ensemble
from lookalike.pipeline import new_model, prepare, run_main
from lookalike.retrieval.search import Searcher
from lookalike.training.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

BASE = {
    "data": {"limit": 300},
    "train": {"epochs": 2, "batch_size": 64},
    "eval": {"sample_queries": 0},
    "encoder": {"projection": "pca", "projection_dim": 64, "image_size": [64, 48]},
}


def _cfg(catalog: Path, out: Path, **update) -> RunConfig:
    data = json.loads(json.dumps(BASE))
    data["data"]["catalog"] = str(catalog)
    data["out_dir"] = str(out)
    for section, values in update.items():
        data.setdefault(section, {}).update(values)
    return RunConfig.model_validate(data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_subset):
    """Two runs on one prepared split: the MLP tower logged to MLflow, and a residual BatchNorm tower."""
    root = tmp_path_factory.mktemp("research")
    uri = (root / "mlruns").resolve().as_uri()  # a local file store, which MLflow 3 serves only when allowed
    a = _cfg(fashion_subset, root / "a", tracking={"mlflow_uri": uri})
    prep = prepare(a, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
        with pytest.raises(LookalikeError, match=r"--mlflow file://.*maintenance mode"):
            run_main(a, progress=False, prep=prep)  # refused: a one-line error before any training
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        run_main(a, progress=False, prep=prep)
    b = _cfg(
        fashion_subset,
        root / "b",
        tower={"name": "residual", "residual": {"depth": 2, "norm": "batch", "activation": "silu"}},
        train={"epochs": 1, "batch_size": 64, "seed": 7},
    )
    run_main(b, progress=False, prep=prep)
    return root, uri, prep, a


def _scalars(tb: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_validation_loss_and_tensorboard_every_epoch(runs):
    root, _uri, _prep, _cfg_a = runs
    history = json.loads((root / "a/results/training_results.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["val_loss"]) and h["val_loss"] > 0 for h in history)
    assert all(h["grad_norm"] > 0 for h in history)
    assert "attribute/ndcg@10" in history[0]["val_metrics"]
    scalars = _scalars(root / "a/tb")
    for tag in (
        "loss/train",
        "loss/validation",
        "validation/metric",
        "validation/attribute/ndcg@10",
        "optim/lr",
        "optim/temperature",
        "optim/grad_norm",
        "similarity/positive",
        "similarity/negative",
    ):
        assert len(scalars[tag]) == 2, tag
    assert scalars["loss/validation"] == pytest.approx([h["val_loss"] for h in history])
    assert scalars["optim/lr"] == pytest.approx([h["lr"] for h in history])
    assert "final/json_to_image/attribute/ndcg@10" in scalars  # the hparams' final metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "a/tb"))
    acc.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))
    assert list((root / "b/tb").glob("events.out.tfevents.*"))  # every run writes them, MLflow or not


def test_mlflow_run_has_params_metrics_and_artifacts(runs, monkeypatch):
    from mlflow.tracking import MlflowClient

    root, uri, _prep, cfg = runs
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.tracking.mlflow_experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tower.name"] == "mlp" and run.data.params["train.epochs"] == "2"
    val = client.get_metric_history(run.info.run_id, "loss/validation")
    history = json.loads((root / "a/results/training_results.json").read_text())["history"]
    assert [m.step for m in val] == [1, 2]
    assert [m.value for m in val] == pytest.approx([h["val_loss"] for h in history])
    assert "final/json_to_image/attribute/ndcg_at_10" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training_results.json", "evaluation.json", "config.json"} <= names


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(runs, precision, tmp_path, one_thread):
    _root, _uri, prep, cfg = runs
    cfg = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"precision": precision, "device": "cpu", "epochs": 2})}
    )
    model = new_model(cfg, prep)
    history = train(model, prep.data, validator(prep.emb, prep.idx["val"], cfg), cfg.train, tmp_path, progress=False)
    assert history[1]["loss"] < history[0]["loss"]
    assert all(math.isfinite(h["grad_norm"]) for h in history)
    again, _ = LookalikeModel.load(tmp_path / "best_model.pt")
    assert all(p.dtype == torch.float32 for p in again.parameters())  # autocast leaves the weights in fp32
    assert np.isfinite(again.encode_attributes([prep.emb.products[0].attributes])).all()


def test_devices_asked_for_and_missing_are_one_line_errors(tmp_path):
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(LookalikeError, match="sees no CUDA GPU"):
            resolve_device("cuda:0")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    import onnxruntime as ort

    from lookalike.encoders.efficientnet import onnx_providers

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert onnx_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    else:
        with pytest.raises(LookalikeError, match="pip install onnxruntime-gpu"):
            onnx_providers("cuda")
        assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(LookalikeError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        _load({"train": {"device": "gpu"}}, tmp_path)
    from lookalike.service.state import ServiceSettings

    with pytest.raises(ValueError, match="device must be"):
        ServiceSettings(checkpoint="m.pt", store="embedded:///tmp/x", device="cuda:x")
    assert ServiceSettings(checkpoint="m.pt", store="embedded:///tmp/x", device="cpu").device == "cpu"


def _load(data: dict, tmp_path: Path) -> RunConfig:
    from lookalike.config import load_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return load_config(path)


def test_ensemble_is_evaluated_searched_and_loaded_like_any_checkpoint(runs, tmp_path, capsys):
    root, _uri, prep, _cfg = runs
    a, b = root / "a/checkpoints/best_model.pt", root / "b/checkpoints/best_model.pt"
    out = tmp_path / "e.pt"
    main(["ensemble", "--models", str(a), str(b), "--out", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    ens, payload = LookalikeModel.load(out)
    assert ens.config.tower.name == "ensemble" and [m.name for m in ens.config.tower.members] == ["mlp", "residual"]
    assert payload["ensemble_of"] == [str(a), str(b)]
    rows = [p.attributes for p in prep.emb.products[:20]]
    va, vb = (LookalikeModel.load(p)[0].encode_attributes(rows) for p in (a, b))
    mean = va + vb
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(ens.encode_attributes(rows), mean, atol=1e-5)
    assert not np.allclose(mean, va, atol=1e-3)  # the second tower counts
    # evaluated and searched through the one path, as any checkpoint
    catalog = json.loads((root / "a/config.json").read_text())["data"]["catalog"]
    ev = evaluate_checkpoint(str(out), catalog, str(tmp_path / "eval"), progress=False)
    assert 0 < ev["headline"]["json_to_image/attribute/ndcg@10"] <= 1
    s = Searcher.open(QueryEncoder.load(out), catalog, progress=False)
    hits, _unknown, _ignored = s.by_attributes(rows[0], 5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    # towers that do not share an image space cannot join
    model, extra = LookalikeModel.load(b)
    model.space.mean = model.space.mean + 1
    model.save(tmp_path / "other.pt", **{k: extra[k] for k in ("schema",) if k in extra})
    with pytest.raises(LookalikeError, match="fitted image space differ"):
        build_ensemble([a, tmp_path / "other.pt"])
