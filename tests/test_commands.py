"""The analysis commands: sanity-check, centrality (with and without sales), temperature study."""

import csv
import json
import tempfile

import numpy as np
import pytest

from lookalike.cli import main
from lookalike.evaluation.centrality import anchor_mask, centrality_report, centrality_scores

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_sanity_check_passes_and_writes_its_log(tmp_path, capsys, monkeypatch):
    out = tmp_path / "temp_logs/sanity_check_results.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's own temp folders go
    main(
        [
            "sanity-check",
            "--out-file",
            str(out),
            "--n",
            "240",
            "--epochs",
            "6",
            "--image-size",
            "64",
            "48",
            "--no-progress",
        ]
    )
    assert "SANITY CHECK PASS" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["status"] == "PASS" and len(res["checks"]) >= 9
    assert all(c["pass"] for c in res["checks"].values())
    assert not list(scratch.glob("lookalike-sanity-*"))  # its checkpoints folder went with the run


def test_centrality_math():
    rng = np.random.default_rng(0)
    core = rng.normal(size=(1, 16)) * 3
    x = np.vstack([core + rng.normal(size=(90, 16)), rng.normal(size=(10, 16)) * 3])
    s = centrality_scores(x)
    assert s[:90].mean() > s[90:].mean()  # the crowd is central, outliers are not
    m = anchor_mask(s, 0.1)
    assert m.sum() == 10 and s[m].min() >= s[~m].max()
    rep = centrality_report(s, ["a"] * 50 + ["b"] * 50, 0.1, sales=s * 2 + 1)
    assert rep["check_anchor_mean_exceeds_overall"] and abs(rep["sales"]["spearman_rho"] - 1) < 1e-9
    assert rep["per_category"]["a"]["n"] == 50


def test_centrality_command_with_a_sales_csv(tmp_path, fashion_dir, capsys):
    rows = (fashion_dir / "styles.csv").read_text().splitlines()[:201]
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "styles.csv").write_text("\n".join(rows) + "\n")
    (cat / "images").symlink_to(fashion_dir / "images")
    small = ["--image-size", "64", "48"]
    main(["centrality", "--catalog", str(cat), "--out", str(tmp_path / "c"), *small, "--no-progress"])
    rep = json.loads((tmp_path / "c/centrality.json").read_text())
    assert rep["n"] == 200 and rep["n_anchors"] == 20 and "sales" not in rep
    assert rep["mean_anchor"] > rep["mean_all"]
    with open(tmp_path / "c/centrality.csv") as f:
        table = list(csv.DictReader(f))
    # Sales that follow centrality exactly must give rho = 1 on the sales path.
    (tmp_path / "sales.csv").write_text(
        "id,sales\n" + "".join(f"{r['id']},{float(r['centrality']) * 1000:.3f}\n" for r in table)
    )
    main(
        [
            "centrality",
            "--catalog",
            str(cat),
            "--out",
            str(tmp_path / "c2"),
            "--sales",
            str(tmp_path / "sales.csv"),
            *small,
            "--no-progress",
        ]
    )
    rep2 = json.loads((tmp_path / "c2/centrality.json").read_text())
    assert rep2["sales"]["n"] == 200 and rep2["sales"]["spearman_rho"] > 0.999
    assert "Spearman" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("id,sales\n1163,lots\n")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "centrality",
                "--catalog",
                str(cat),
                "--out",
                str(tmp_path / "c3"),
                "--sales",
                str(tmp_path / "bad.csv"),
                *small,
                "--no-progress",
            ]
        )
    assert e.value.code == 2 and "'lots' is not a number" in capsys.readouterr().err


def test_temperature_study_compares_on_one_split(tmp_path, fashion_subset):
    (tmp_path / "cfg.json").write_text(json.dumps({"eval": {"sample_queries": 0}}))
    main(
        [
            "temperature-study",
            "--config",
            str(tmp_path / "cfg.json"),
            "--catalog",
            str(fashion_subset),
            "--limit",
            "200",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--temperatures",
            "0.05",
            "--projection",
            "none",
            "--image-size",
            "64",
            "48",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    summary = json.loads((tmp_path / "temperature_study.json").read_text())
    rows = summary["rows"]
    assert [r["temperature"] for r in rows] == ["0.05", "learnable"]
    # The best is the run with the highest validation metric (the first on a tie), read back from each run's
    # own training results, never from the study's table.
    val = {
        t: round(json.loads((tmp_path / f"t={t}/results/training_results.json").read_text())["best_val_metric"], 4)
        for t in ("0.05", "learnable")
    }
    col = f"val {summary['config']['train']['val_metric']}"
    assert [r[col] for r in rows] == [val["0.05"], val["learnable"]]
    best = "learnable" if val["learnable"] > val["0.05"] else "0.05"
    assert summary["best"] == next(r for r in rows if r["temperature"] == best)
    assert (tmp_path / "temperature_study.png").stat().st_size > 0
    assert (
        f"Best on validation: temperature {best} ({col} = {val[best]})."
        in (tmp_path / "temperature_study.md").read_text()
    )
    splits = {
        json.dumps(json.loads((tmp_path / f"t={t}/results/split.json").read_text())["test"])
        for t in ("0.05", "learnable")
    }
    assert len(splits) == 1  # the same split for every temperature
