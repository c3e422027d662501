"""The comparison studies through the CLI on a tiny real catalogue: `compare-towers` (MLP vs coarse-to-fine,
± adapter, regular and cold-start splits) and `compare-rerankers` (plain top-10 vs MMR vs the list-wise
reranker) on the tower it trained. Small towers, one epoch: these check what the studies write and that their
figures hang together, not the figures' size (that is benchmarks/towers.py's job)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ttest_rel, wilcoxon

from lookalike.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

# The temperature study's test (test_commands.py) embeds the same 200 products at the same size: one cache.
SMALL = ["--limit", "200", "--epochs", "1", "--batch-size", "64", "--image-size", "64", "48", "--no-progress"]
CONFIG = {
    "encoder": {"projection": "pca", "projection_dim": 32},
    "tower": {
        "field_dim": 16,
        "hidden_dim": 64,
        "text_hidden_dim": 64,
        "coarse_to_fine": {"pyramid_dim": 32, "heads": 2},
    },
}
TOWERS, SPLITS = ("mlp", "coarse-to-fine"), ("regular", "cold-start")


@pytest.fixture(scope="module")
def towers(fashion_subset, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("compare-towers")
    (out / "cfg.json").write_text(json.dumps(CONFIG))
    main(
        [
            "compare-towers",
            "--config",
            str(out / "cfg.json"),
            "--catalog",
            str(fashion_subset),
            *SMALL,
            "--adapter-epochs",
            "1",
            "--adapter-dim",
            "16",
            "--out",
            str(out),
        ]
    )
    return out, json.loads((out / "results.json").read_text())


def _ids(out, split: str) -> dict[str, list[str]]:
    return json.loads((out / split / "split.json").read_text())


def test_compare_towers_reports_every_tower_on_every_split(towers, fashion_subset):
    out, r = towers
    assert list(r["splits"]) == list(SPLITS) and r["config"]["data"]["limit"] == 200
    with np.load(out / "per_query.npz") as z:
        per_query = {k: z[k] for k in z.files}
    assert set(per_query) == {f"{s}/{t}{a}" for s in SPLITS for t in TOWERS for a in ("", "+adapter")}
    for split, block in r["splits"].items():
        ids = _ids(out, split)
        n_test = len(ids["test"])
        assert block["sizes"] == {k: len(ids[k]) for k in ("train", "val", "test")}
        assert sum(block["sizes"].values()) == 200
        assert not set(ids["train"]) & set(ids["test"]) and not set(ids["val"]) & set(ids["test"])
        assert list(block["towers"]) == list(TOWERS)
        for tower, t in block["towers"].items():
            pq, pq_ad = per_query[f"{split}/{tower}"], per_query[f"{split}/{tower}+adapter"]
            assert len(pq) == len(pq_ad) == n_test and ((pq >= 0) & (pq <= 1)).all() and pq.max() > 0
            assert t["test_ndcg@10"] == pytest.approx(pq.mean())
            assert t["adapter"]["test_ndcg@10"] == pytest.approx(pq_ad.mean())
            assert 0 <= t["adapter"]["pca_test_ndcg@10"] <= 1 and 0 <= t["val_ndcg@10"] <= 1
            assert t["epochs_run"] == 1 and t["best_epoch"] == 1 and t["tower_params"] > 0
            assert sum(c["n"] for c in t["per_category"].values()) == n_test
            assert t["adapter"]["vs_full"]["n"] == n_test and t["adapter"]["search_adapted"]["dim"] == 16
            assert t["adapter"]["search_full"]["dim"] == 32
            assert (out / split / tower / "checkpoints" / "best_model.pt").is_file()
            assert (out / split / tower / "adapter.pt").is_file()
        assert block["towers"]["mlp"]["tower_params"] != block["towers"]["coarse-to-fine"]["tower_params"]
        # The paired tests: coarse-to-fine (b) against the MLP (a) on the same test queries, as scipy computes them.
        for name, (a, b) in {
            "coarse-to-fine vs mlp": ("mlp", "coarse-to-fine"),
            "coarse-to-fine+adapter vs mlp+adapter": ("mlp+adapter", "coarse-to-fine+adapter"),
        }.items():
            s, x, y = block["significance"][name], per_query[f"{split}/{a}"], per_query[f"{split}/{b}"]
            assert s["n"] == n_test and s["b_better"] == (y > x).sum() and s["a_better"] == (y < x).sum()
            assert s["mean_a"] == pytest.approx(x.mean()) and s["mean_diff"] == pytest.approx((y - x).mean())
            assert s["t_test_p"] == pytest.approx(ttest_rel(y, x).pvalue)
            assert s["wilcoxon_p"] == pytest.approx(wilcoxon(y, x).pvalue)


def test_cold_start_split_holds_its_values_out_of_training(towers, fashion_subset):
    out, r = towers
    held = r["splits"]["cold-start"]["held_out"]
    assert held["field"] == "articleType" and held["values"]
    with open(fashion_subset / "styles.csv", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(",")
        col = header.index("articleType")
        article = {line.split(",")[0]: line.split(",")[col] for line in f}
    ids = _ids(out, "cold-start")
    assert {article[i] for i in ids["test"]} == set(held["values"])
    assert not {article[i] for i in ids["train"] + ids["val"]} & set(held["values"])
    assert {article[i] for i in _ids(out, "regular")["test"]} - set(held["values"])  # the regular split mixes them


def test_compare_rerankers_on_the_trained_tower(towers, tmp_path, capsys):
    out, r = towers
    model = out / "regular" / "mlp" / "checkpoints" / "best_model.pt"
    main(["compare-rerankers", "--model", str(model), "--steps", "5", "--mu", "0.3", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    rr = json.loads((tmp_path / "rerank.json").read_text())
    sizes = r["splits"]["regular"]["sizes"]
    assert rr["model"] == str(model) and rr["candidates"] == 100
    assert rr["n_queries"] == sizes["test"] and rr["fit_queries"] + rr["select_queries"] == sizes["val"]
    assert rr["fit_queries"] > 0 and rr["select_queries"] > 0
    methods = rr["methods"]
    lambdas = (0.95, 0.9, 0.85, 0.83, 0.8, 0.78, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3)
    assert [m for m in methods if m.startswith("MMR")] == [f"MMR λ={lam}" for lam in lambdas]
    assert "list-wise μ=0.3" in methods and any(m.startswith("list-wise untrained") for m in methods)
    for name, m in methods.items():
        assert 0 <= m["ndcg@10"] <= 1 and 0 < m["coverage"] <= 1 and 0 <= m["ild@10"] <= 2, name
        assert m["novelty"] > 0 and m["ms_per_query"] >= 0, name
        assert f"{name:<30} nDCG@10 {m['ndcg@10']:.4f}" in printed
    # Plain top-10 over the same test gallery and relevance is the figure compare-towers gave this tower.
    assert methods["top-10"]["ndcg@10"] == pytest.approx(r["splits"]["regular"]["towers"]["mlp"]["test_ndcg@10"])
    listwise = methods["list-wise μ=0.3"]
    assert listwise["mu"] == 0.3 and listwise["params"] > 0 and listwise["history"][-1]["step"] <= 5
    assert rr["verdict"][0].startswith("chosen on validation: μ=0.3") and "\n".join(rr["verdict"]) in printed
