"""The study and the live searcher end to end on a slice of the real KMWP corpus: CLI, GT files named in
every result, α endpoints = single retrievers, ranx agreement, pgvector path = exact path."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from store_servers import pg_url
from test_itembank_groundtruth import _Judge

from lookalike.cli import main
from lookalike.itembank.loading import PRESETS, load_item_bank
from lookalike.itembank.search import ItemSearcher, latency_bench

pytestmark = pytest.mark.slow  # the whole study, PostgreSQL

KMWP = SHARED / "kmwp" / "train.csv"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        main(
            [
                "itembank",
                "study",
                "--data",
                str(KMWP),
                "--limit",
                "120",
                "--out",
                str(out),
                "--no-progress",
                "--gt",
                "label",
                "tfidf",
                "llm",
                "hybrid",
                "--alphas",
                "0",
                "0.5",
                "1",
                "--judge-queries",
                "12",
                "--judge-pool",
                "4",
                "--reranker",
                "learned",
                "--no-ranx-check",
                "--judge-url",
                f"http://127.0.0.1:{srv.server_address[1]}/v1",
            ]
        )
    finally:
        srv.shutdown()
    return out, json.loads((out / "study.json").read_text())


def test_study_writes_everything_with_provenance(study):
    out, s = study
    for f in ("study.md", "study.csv", "study_alpha.png", "runs/dense.run", "runs/bm25.run"):
        assert (out / f).stat().st_size > 0
    assert s["seed"] == 42 and s["config"]["limit"] == 120 and s["provenance"]["versions"]["numpy"]
    assert s["n_items"] == 120 and s["ranx_check"] is None  # ranx agreement: benchmark + test_metrics.py
    md = (out / "study.md").read_text()
    for res in s["results"].values():
        g = res["gt"]  # every evaluation names its qrels file, and the file is the one it scored
        assert hashlib.sha1(Path(g["path"]).read_bytes()).hexdigest() == g["sha1"] and g["path"] in md
    assert s["results"]["llm"]["gt"]["judge_stats"]["judged"] > 0
    errors = (out / "errors.html").read_text(encoding="utf-8")
    for gname, res in s["results"].items():  # per GT, the worst queries per class and per question type
        if "winner" in res:
            assert f"GT {gname}, run {res['winner']}" in errors
    assert "type text-only" in errors and "top-5" in errors and "ground truth (" in errors
    for res in s["results"].values():  # binary truths: graded and binarised nDCG agree
        for row in res["table"].values():
            assert row["ndcg@10"] == pytest.approx(row["ndcg@10_binary"], nan_ok=True)


def test_study_tables_are_consistent(study):
    _, s = study
    res = s["results"]["label"]
    t = res["table"]
    for m in ("ndcg@10", "mrr", "hit@1", "recall@10"):
        assert t["minmax-a1.00"][m] == pytest.approx(t["dense"][m], abs=1e-12)
        assert t["minmax-a0.00"][m] == pytest.approx(t["bm25"][m], abs=1e-12)
    assert res["winner"] == max(t, key=lambda r: (t[r]["ndcg@10"], t[r]["mrr"]))
    # A query whose class has no other item in the slice has nothing relevant: left out, not scored 0.
    assert res["n_dev"] + res["n_test"] == res["n_queries"] == res["gt"]["queries"] > 110
    assert sum(c["n_queries"] for c in res["per_class"]["dense"].values()) == res["n_queries"]
    for c in res["hybrid_vs_single_on_test"].values():
        assert 0 <= c["ndcg@10"]["fisher_p"] <= 1 and c["ndcg@10"]["n"] == res["n_test"]
    assert res["best_two"]["tests"]["ndcg@10"]["mean_a"] == pytest.approx(t[res["winner"]]["ndcg@10"])
    rr = res["rerank"]  # the learned reranker is fitted on dev queries and scored on the test queries only
    assert rr["n_test"] == res["n_test"] == rr["vs_base"]["ndcg@10"]["n"]
    assert rr["base_table"]["ndcg@10"] == pytest.approx(rr["vs_base"]["ndcg@10"]["mean_b"])
    assert len(rr["reranker"]["coef"][0]) == 6
    hybrid = s["results"]["hybrid"]["gt"]
    assert hybrid["pairs"] <= min(s["results"]["tfidf"]["gt"]["pairs"], s["results"]["llm"]["gt"]["pairs"])


def test_runs_never_return_the_query_itself(study):
    out, _ = study
    for line in (out / "runs" / "bm25.run").read_text().splitlines():
        q, _, d, *_ = line.split()
        assert q != d


@pytest.fixture(scope="module")
def bank():
    b = load_item_bank(KMWP, PRESETS["kmwp"])
    return b.head(150)


def test_pgvector_path_equals_exact_path_and_stability(bank):
    pg = ItemSearcher(bank, store_url=pg_url("itembank"))
    mem = ItemSearcher(bank)  # the same bank searched exactly in memory
    try:
        for i in (0, 7, 42):
            q, me, ex = bank.texts[i], bank.ids[i], np.array([i])
            qv = pg.dense.embed([q], cache=False)
            dense = pg.dense.search(query_vectors=qv, k=100, exclude=ex)  # exact, in process
            assert [h for h, _ in pg.search(q, 10, "dense", me)] == [bank.ids[j] for j in dense[0][0, :10]]
            for mode in ("hybrid", "rrf", "bm25"):
                got, want = pg.search(q, 10, mode, me), mem.search(q, 10, mode, me)
                assert [h for h, _ in got] == [h for h, _ in want] and me not in {h for h, _ in got}
                np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        res = latency_bench(pg, n_queries=30, k=10, warmup=2)
        assert res["success_rate"] == 1.0 and res["store_matches_exact_top_k"] == 1.0 and res["p95_ms"] > 0
    finally:
        pg.close()


def test_cli_errors_are_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["itembank", "search", "--data", str(tmp_path / "none.csv"), "--text", "사과"])
    assert e.value.code == 2 and "item bank file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["itembank", "search", "--data", str(KMWP), "--limit", "20", "--id", "row-999999"])
    assert "no item with id 'row-999999'" in capsys.readouterr().err


def test_config_mistakes_fail_before_any_work(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["itembank", "study", "--data", str(KMWP), "--alphas", "0.5", "2", "--out", str(tmp_path)])
    assert e.value.code == 2 and "alphas.1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["itembank", "build-gt", "--data", str(KMWP), "--kind", "hybrid", "--out", str(tmp_path)])
    assert "needs a judge endpoint (--judge-url)" in capsys.readouterr().err


def test_build_gt_writes_qrels_with_its_config(tmp_path):
    main(
        [
            "itembank",
            "build-gt",
            "--data",
            str(KMWP),
            "--kind",
            "label",
            "--limit",
            "50",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    meta = json.loads((tmp_path / "qrels" / "label.json").read_text())
    assert meta["config"]["limit"] == 50 and meta["provenance"]["versions"]["numpy"]
    lines = (tmp_path / "qrels" / "label.qrels").read_text().splitlines()
    assert len(lines) == meta["pairs"] and all(q != d for q, _, d, _ in map(str.split, lines))
