"""finetune-classifier on a small real subset, then `lookalike ab` over it: ONNX parity, split hygiene, report."""

import json

import numpy as np
import pytest
from conftest import SHARED

from lookalike.cli import main
from lookalike.errors import LookalikeError
from lookalike.studies.classifier_ab import ABConfig, run_ab
from lookalike.training.classifier import FinetuneConfig, finetune

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    rng = np.random.default_rng(1)
    rows = []
    for sub, label in (("positives", 1), ("negatives", 0)):
        files = sorted((SHARED / "smiles" / sub).glob("*.jpg"))
        rows += [f"{files[i]},{label}" for i in rng.choice(len(files), 60, replace=False)]
    path = tmp_path_factory.mktemp("smiles") / "labels.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(one_thread, small_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    cfg = FinetuneConfig(
        data=str(small_csv),
        out_dir=str(out),
        image_size=(64, 64),
        encoder_runtime="torch",
        epochs=40,
        patience=5,
        lr=3e-3,
    )
    return out, finetune(cfg, progress=False)


def test_finetune_early_stops_exports_a_matching_onnx_and_records_its_split(trained):
    out, s = trained
    assert s["onnx"]["max_abs_diff_vs_torch"] < 1e-4 and (out / "model.onnx").exists()
    assert s["kept_epoch"] == s["best_epoch"] and s["epochs_run"] <= 40
    best = max(h["val_auc"] for h in s["history"])
    assert s["history"][s["best_epoch"] - 1]["val_auc"] == best
    if s["epochs_run"] < 40:  # stopped by patience: nothing better in the last `patience` epochs
        assert s["epochs_run"] - s["best_epoch"] == 5
    assert s["val_at_kept"]["auc"] > 0.6  # 84 training faces already carry signal
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    side = json.loads((out / "model.onnx.json").read_text())
    assert set(side["train_sha1"]) == set(split["train_sha1"]) and side["output"] == "probability"
    assert (out / "training_curves.png").stat().st_size > 10_000


def test_ab_compares_three_models_on_the_held_out_split(trained, small_csv, tmp_path, capsys):
    out, _ = trained
    main(
        [
            "ab",
            "--data",
            str(small_csv),
            "--split",
            str(out / "split.json"),
            "--models",
            "haar",
            "fer",
            f"ours={out / 'model.onnx'}",
            "--out",
            str(tmp_path),
            "--n-boot",
            "200",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr()
    assert "fer vs ours" in printed.out and "wall time" in printed.err  # the result; a note
    res = json.loads((tmp_path / "ab.json").read_text())
    assert [m["name"] for m in res["models"]] == ["haar", "fer", "ours"] and len(res["pairs"]) == 3
    split = json.loads((out / "split.json").read_text())
    assert res["split"]["test"] == split["test"]  # evaluated on exactly the held-out files
    for m in res["models"]:
        t = m["test"]
        lo, hi = t["roc_auc_delong_ci"]
        assert lo <= t["roc_auc"] <= hi
        blo, bhi = t["bootstrap_ci"]["at_tuned"]["accuracy"]
        assert blo <= t["at_tuned"]["accuracy"] <= bhi
        assert t["at_tuned"]["tp"] + t["at_tuned"]["fn"] == res["data"]["test"]["positives"]
    # 18 test images cannot separate these models, and the report must say so
    assert any("sample too small" in f for p in res["pairs"] for f in p["flags"])
    assert any("small validation set" in f for f in res["flags"])
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64") == 6 and "DeLong" in page
    assert len(list((tmp_path / "charts").glob("*.png"))) == 6


def test_ab_refuses_to_score_a_model_on_its_own_training_images(trained, small_csv, tmp_path):
    out, _ = trained
    with pytest.raises(LookalikeError, match=r"trained on .* of the images"):
        run_ab(ABConfig(data=str(small_csv), models=["haar", str(out / "model.onnx")], out_dir=str(tmp_path)))


def test_ab_user_mistakes_exit_2(small_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["ab", "--data", str(small_csv), "--models", "haar", "haar", "--out", str(tmp_path)])
    assert e.value.code == 2 and "model names must differ" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["finetune-classifier", "--data", str(small_csv), "--epochs", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--epochs" in capsys.readouterr().err


def test_unfreezing_the_last_block_trains_it_and_exports_it(small_csv, tmp_path):
    cfg = FinetuneConfig(
        data=str(small_csv),
        out_dir=str(tmp_path),
        image_size=(32, 32),
        encoder_runtime="torch",
        unfreeze_last_block=True,
        epochs=2,
        train_limit=24,
        val_limit=8,
    )
    s = finetune(cfg, progress=False)
    assert s["onnx"]["max_abs_diff_vs_torch"] < 1e-4  # the tuned block is inside the exported graph
    import torch

    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    from lookalike.encoders.registry import create_image_encoder

    frozen = create_image_encoder("efficientnet-lite0", image_size=(32, 32), runtime="torch").model.net
    tuned = saved["last_block"]
    changed = [
        k
        for k, v in tuned.items()
        if k.startswith("block.")
        and v.dtype.is_floating_point
        and not torch.equal(v, frozen._blocks[-1].state_dict()[k[len("block.") :]])
    ]
    assert changed  # the last block's weights moved
