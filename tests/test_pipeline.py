"""End to end on the real catalogue (a small stratified subset): train, artifacts, resume, evaluate, search."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.cli import main
from lookalike.config import RunConfig
from lookalike.errors import LookalikeError
from lookalike.model import LookalikeModel
from lookalike.pipeline import run_main
from lookalike.retrieval.search import Searcher

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_subset):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig.model_validate(
        {
            "out_dir": str(out),
            "data": {"catalog": str(fashion_subset), "limit": 300},
            "train": {"epochs": 3, "batch_size": 64, "patience": 3},
            "eval": {"extra_relevance": {"articleType": ["articleType"]}, "sample_queries": 1},
            # Small images: these tests check the job's mechanics; the encoder's own tests use its full size.
            "encoder": {"projection": "pca", "projection_dim": 128, "image_size": [64, 48]},
        }
    )
    return out, cfg, run_main(cfg, progress=False)


def test_main_job_writes_every_artifact_with_provenance(trained):
    out, _cfg, _summary = trained
    for rel in (
        "checkpoints/best_model.pt",
        "checkpoints/last.pt",
        "results/training_results.json",
        "results/training_charts.png",
        "results/evaluation.json",
        "results/split.json",
        "results/runs/json_to_image.run",
        "results/runs/text_to_image.run",
        "results/runs/image_to_image.run",
        "results/runs/attribute.qrels",
        "results/runs/instance.qrels",
    ):
        assert (out / rel).stat().st_size > 0, rel
    assert len(list((out / "results/similarity_search").glob("*.png"))) == 3  # 1 query × 3 tasks
    tr = json.loads((out / "results/training_results.json").read_text())
    assert tr["seed"] == 42 and tr["versions"]["torch"] and tr["timestamp"]
    assert tr["config"]["train"]["epochs"] == 3 and tr["split"]["sizes"]["test"] > 30
    assert [h["epoch"] for h in tr["history"]] == [1, 2, 3]
    assert tr["history"][-1]["loss"] < tr["history"][0]["loss"]
    ev = json.loads((out / "results/evaluation.json").read_text())
    ja = ev["json_to_image"]["attribute"]
    n_test = tr["split"]["sizes"]["test"]
    assert ev["json_to_image"]["gallery_size"] == n_test  # the whole test gallery, not a batch
    assert ja["all"]["n_queries"] == n_test and ja["anchor"]["n_queries"] == round(0.1 * n_test)
    assert ja["all"]["hit@10"] > 0.3  # far above chance on ~45 gallery items with a trained tower
    assert "per_category" in ja and "attribute:articleType" in ev["json_to_image"]
    assert ev["centrality"]["check_anchor_mean_exceeds_overall"]
    assert ev["json_to_image"]["query_health"]["unit_norm_ok"]
    assert ev["json_to_image"]["similarity"]["positive_mean"] > ev["json_to_image"]["similarity"]["negative_mean"]
    run_lines = (out / "results/runs/json_to_image.run").read_text().splitlines()
    assert len(run_lines) == n_test * min(100, n_test)
    # JSON and text queries rank with the hubness correction; the plain-cosine ranking is reported beside it.
    assert (
        ev["ranking"]["corrected_tasks"] == ["json_to_image", "text_to_image"] and ev["ranking"]["hubness_weight"] > 0
    )
    assert ev["json_to_image_cosine"]["attribute"]["all"]["n_queries"] == n_test
    assert run_lines != (out / "results/runs/json_to_image_cosine.run").read_text().splitlines()
    bank = LookalikeModel.load(out / "checkpoints/best_model.pt")[0].query_bank
    assert bank is not None and len(bank["articleType"]) == tr["split"]["sizes"]["train"]


def test_resume_continues_from_last_checkpoint(trained, tmp_path):
    out, cfg, _ = trained
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    more = cfg.model_copy(
        update={
            "out_dir": str(tmp_path),
            "train": cfg.train.model_copy(update={"epochs": 4, "patience": 9}),
            "eval": cfg.eval.model_copy(update={"sample_queries": 0}),
        }
    )
    run_main(more, resume=True, progress=False)
    tr = json.loads((tmp_path / "results/training_results.json").read_text())
    assert [h["epoch"] for h in tr["history"]] == [1, 2, 3, 4]


def test_resume_point_loads_with_weights_only(trained):
    """last.pt holds only tensors, dicts, lists, numbers and strings: torch's safe loader reads it."""
    out, _cfg, _ = trained
    state = torch.load(out / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_a_save_interrupted_midway_keeps_the_previous_resume_point(trained, tmp_path, monkeypatch):
    """The save of last.pt dies halfway through its bytes (a kill, a full disk): the previous last.pt is
    intact, no partial file is left beside it, and --resume goes on from it."""
    out, cfg, _ = trained
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    before = (tmp_path / "checkpoints/last.pt").read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and "optimizer" in obj):  # best_model.pt saves as usual
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(half)
        else:
            f.write(half)
        raise OSError("simulated: killed halfway through the save")

    more = cfg.model_copy(
        update={
            "out_dir": str(tmp_path),
            "train": cfg.train.model_copy(update={"epochs": 4, "patience": 9}),
            "eval": cfg.eval.model_copy(update={"sample_queries": 0}),
        }
    )
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="simulated"):
        run_main(more, resume=True, progress=False)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints/last.pt").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best_model.pt", "last.pt"]
    run_main(more, resume=True, progress=False)
    tr = json.loads((tmp_path / "results/training_results.json").read_text())
    assert [h["epoch"] for h in tr["history"]] == [1, 2, 3, 4]


class _RunsCode:
    """Unpickling this calls open(path, "w"): what a tampered resume point could do if loaded unsafely."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_resume_refuses_a_resume_point_that_would_run_code(trained, tmp_path):
    out, cfg, _ = trained
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    state = torch.load(out / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    torch.save({**state, "history": _RunsCode(marker)}, tmp_path / "checkpoints/last.pt")
    again = cfg.model_copy(update={"out_dir": str(tmp_path), "eval": cfg.eval.model_copy(update={"sample_queries": 0})})
    with pytest.raises(LookalikeError, match=r"cannot resume from .*last\.pt"):
        run_main(again, resume=True, progress=False)
    assert not marker.exists()


def test_same_seed_same_numbers(trained, tmp_path):
    _out, cfg, summary = trained
    again = run_main(
        cfg.model_copy(update={"out_dir": str(tmp_path), "eval": cfg.eval.model_copy(update={"sample_queries": 0})}),
        progress=False,
    )
    assert again["headline"] == summary["headline"]


@pytest.fixture(scope="module")
def new_catalog(trained, tmp_path_factory, fashion_dir):
    """100 products never seen in training (plus product 1163), in the fashion-products layout."""
    out, _, _ = trained
    seen = set(json.loads((out / "results/split.json").read_text())["train"])
    rows = (fashion_dir / "styles.csv").read_text().splitlines()
    body = [r for r in rows[1:] if r.split(",")[0] not in seen and r.split(",")[0] != "1163"][-99:]
    body += [r for r in rows[1:] if r.startswith("1163,")]
    cat = tmp_path_factory.mktemp("new")
    (cat / "styles.csv").write_text("\n".join([rows[0], *body]) + "\n")
    (cat / "images").symlink_to(fashion_dir / "images")
    return cat


def test_evaluate_on_a_catalogue_never_seen_in_training(trained, new_catalog, tmp_path, capsys):
    out, _cfg, _ = trained
    main(
        [
            "evaluate",
            "--model",
            str(out / "checkpoints/best_model.pt"),
            "--catalog",
            str(new_catalog),
            "--out",
            str(tmp_path / "ev"),
            "--no-progress",
        ]
    )
    ev = json.loads((tmp_path / "ev/evaluation.json").read_text())
    assert ev["json_to_image"]["n_queries"] == 100 and ev["json_to_image"]["gallery_size"] == 100
    for name in ("json_to_image.run", "text_to_image.run", "image_to_image.run", "attribute.qrels"):
        assert (tmp_path / "ev" / name).exists()
    first = (tmp_path / "ev/image_to_image.run").read_text().splitlines()[0].split()
    assert first[0] != first[2] and first[3] == "1"  # product ids; the query photo itself is never a result
    assert "json_to_image/attribute/hit@10" in capsys.readouterr().out
    # `search` ranks a JSON query exactly as the evaluation did (same hubness correction, same gallery).
    searcher = Searcher.open(str(out / "checkpoints/best_model.pt"), str(new_catalog), progress=False)
    query = searcher.emb.products[0]
    hits, _, _ = searcher.by_attributes(query.attributes, k=5)
    run = [
        ln.split() for ln in (tmp_path / "ev/json_to_image.run").read_text().splitlines() if ln.split()[0] == query.id
    ]
    assert [h.id for h in hits] == [r[2] for r in run[:5]]
    np.testing.assert_allclose([h.score for h in hits], [float(r[4]) for r in run[:5]], atol=1e-4)


def test_search_cli_json_text_image_and_product(trained, new_catalog, fashion_dir, capsys):
    out, _cfg, _ = trained
    model = str(out / "checkpoints/best_model.pt")
    catalog = str(new_catalog)
    main(
        [
            "search",
            "--model",
            model,
            "--catalog",
            catalog,
            "--json",
            '{"gender": "Men", "articleType": "Tshirts", "baseColour": "Black", "usage": "Martian"}',
            "-k",
            "3",
            "--format",
            "json",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    hits = json.loads(captured.out)
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert "Martian" in captured.err  # unknown value searched as unknown, and said so
    main(["search", "--model", model, "--catalog", catalog, "--text", "blue denim jeans", "-k", "2", "--no-progress"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    main(
        [
            "search",
            "--model",
            model,
            "--catalog",
            catalog,
            "--image",
            str(fashion_dir / "images/1163.jpg"),
            "-k",
            "1",
            "--format",
            "json",
            "--no-progress",
        ]
    )
    assert json.loads(capsys.readouterr().out)[0]["id"] == "1163"  # its own photo is the nearest
    main(
        [
            "search",
            "--model",
            model,
            "--catalog",
            catalog,
            "--product",
            "1163",
            "-k",
            "2",
            "--format",
            "json",
            "--no-progress",
        ]
    )
    assert "1163" not in [h["id"] for h in json.loads(capsys.readouterr().out)]


def test_search_json_output_stays_json_when_an_image_fails(trained, fashion_dir, tmp_path, capsys):
    """A product whose image cannot be decoded is skipped and said so on stderr; stdout holds the JSON alone."""
    out, _cfg, _ = trained
    rows = (fashion_dir / "styles.csv").read_text(encoding="utf-8").splitlines()
    body = rows[1:9]
    (tmp_path / "images").mkdir()
    for r in body[1:]:
        pid = r.split(",")[0]
        shutil.copy(fashion_dir / "images" / f"{pid}.jpg", tmp_path / "images" / f"{pid}.jpg")
    broken = body[0].split(",")[0]
    (tmp_path / "images" / f"{broken}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    (tmp_path / "styles.csv").write_text("\n".join([rows[0], *body]) + "\n", encoding="utf-8")
    query = '{"gender": "Men", "articleType": "Tshirts"}'
    model = str(out / "checkpoints/best_model.pt")
    argv = ["search", "--model", model, "--catalog", str(tmp_path), "--json", query, "-k", "7", "--format", "json"]
    main([*argv, "--no-progress"])
    captured = capsys.readouterr()
    hits = json.loads(captured.out)
    assert sorted(h["id"] for h in hits) == sorted(r.split(",")[0] for r in body[1:])
    assert "skipped 1 products whose image failed" in captured.err


def test_checkpoint_round_trip(trained):
    out, _, _ = trained
    model, payload = LookalikeModel.load(out / "checkpoints/best_model.pt")
    v = model.encode_attributes([{"gender": "Women", "articleType": "Kurtas"}])
    assert v.shape == (1, 128) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert payload["schema"]["category_field"] == "subCategory"
