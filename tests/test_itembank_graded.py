"""Graded relevance: nDCG on the grades, the other metrics at a threshold (checked by hand and against ranx),
and the LLM judge on the 1–5 scale sending figures as image parts to a local OpenAI-compatible stub server
we start here on 127.0.0.1 (a stub: it grades by a fixed rule, no model runs)."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from lookalike.itembank.evaluate import Grading, binarise, run_metrics
from lookalike.itembank.judge import JudgeConfig, LLMJudge, judge_qrels, parse_answer

IDS = ["q", "a", "b", "c", "d"]


def test_graded_ndcg_by_hand_and_threshold_metrics():
    # q's list: a (grade 5), b (grade 2), c (unjudged), d (grade 4); on 1–5, gains are grade − 1.
    idx = np.array([[1, 2, 3, 4]] + [[0, 2, 3, 4]] * 4)
    qrels = {"q": {"a": 5, "b": 2, "d": 4}}
    rows, pq = run_metrics(idx, IDS, qrels, Grading("1-5"))
    assert rows.tolist() == [0]
    disc = 1 / np.log2(np.arange(2, 6))
    dcg = 4 * disc[0] + 1 * disc[1] + 3 * disc[3]
    ideal = 4 * disc[0] + 3 * disc[1] + 1 * disc[2]
    assert pq["ndcg@10"][0] == pytest.approx(dcg / ideal)
    # at the threshold 3, a and d are relevant: hit@1 1, precision@5 2/5, MRR 1, MAP (1/1 + 2/4) / 2
    assert pq["hit@1"][0] == 1 and pq["precision@5"][0] == pytest.approx(2 / 5) and pq["mrr"][0] == 1
    assert pq["map"][0] == pytest.approx((1 + 2 / 4) / 2)
    assert pq["ndcg@10_binary"][0] == pytest.approx((disc[0] + disc[3]) / (disc[0] + disc[1]))
    _, strict = run_metrics(idx, IDS, qrels, Grading("1-5", threshold=5))
    assert strict["map"][0] == 1 and strict["ndcg@10"][0] == pq["ndcg@10"][0]  # nDCG ignores the threshold
    assert binarise(qrels, Grading("1-5")) == {"q": {"a": 1, "d": 1}}


def test_binary_truth_scores_the_same_graded_and_binarised():
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(30)]
    qrels = {q: {d: 1 for d in rng.choice(ids, 4, replace=False) if d != q} for q in ids[:20]}
    idx = np.array([rng.permutation(30)[:10] for _ in ids])
    _, pq = run_metrics(idx, ids, qrels)
    np.testing.assert_allclose(pq["ndcg@10"], pq["ndcg@10_binary"])


@pytest.mark.slow  # ranx compiles its metrics with numba on first use (seconds)
def test_graded_metrics_equal_ranx():
    from lookalike.itembank.evaluate import ranx_qrels, ranx_run

    rng = np.random.default_rng(1)
    ids = [f"i{n}" for n in range(60)]
    qrels = {q: {str(d): int(rng.integers(1, 6)) for d in rng.choice(ids, 8, replace=False) if d != q} for q in ids}
    idx = np.array([[j for j in rng.permutation(60) if j != i][:20] for i in range(60)])
    g = Grading("1-5")
    rows, pq = run_metrics(idx, ids, qrels, g)
    from ranx import evaluate

    theirs = evaluate(
        ranx_qrels(qrels, g, {ids[i] for i in rows}),
        ranx_run(idx, ids, rows, "r"),
        ["ndcg@10", "hit_rate@1-l2", "precision@5-l2", "recall@10-l2", "mrr@20-l2", "map@20-l2"],
    )
    for ours, name in [
        ("ndcg@10", "ndcg@10"),
        ("hit@1", "hit_rate@1-l2"),
        ("precision@5", "precision@5-l2"),
        ("recall@10", "recall@10-l2"),
        ("mrr", "mrr@20-l2"),
        ("map", "map@20-l2"),
    ]:
        assert pq[ours].mean() == pytest.approx(float(theirs[name]), abs=1e-9), ours


def test_parse_graded_answers():
    assert parse_answer('{"grade": 4}', "1-5") == 4
    assert parse_answer('```json\n{"grade": 1}\n```', "1-5") == 1
    for bad in ('{"grade": 6}', '{"grade": 0}', '{"grade": true}', '{"grade": "4"}', '{"similar": true}'):
        assert parse_answer(bad, "1-5") is None, bad
    assert parse_answer('{"grade": 4}') is None  # a binary judge wants {"similar": ...}


class _GradingJudge(BaseHTTPRequestHandler):
    """Grades 5 when both questions carry a figure (the request had two image parts, each a decodable PNG
    data URL), 3 when they share the word 사과, else 1; remembers every request body."""

    bodies: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _GradingJudge.bodies.append(body)
        user = body["messages"][-1]["content"]
        if isinstance(user, list):
            images = [p for p in user if p["type"] == "image_url"]
            for p in images:
                head, data = p["image_url"]["url"].split(",", 1)
                assert head == "data:image/png;base64"
                Image.open(io.BytesIO(base64.b64decode(data))).load()
            text = " ".join(p["text"] for p in user if p["type"] == "text")
        else:
            images, text = [], user
        a, b = text.split("Question B: ")
        grade = 5 if len(images) == 2 else 3 if "사과" in a and "사과" in b else 1
        data = json.dumps({"choices": [{"message": {"content": json.dumps({"grade": grade})}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def grader():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _GradingJudge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_graded_judge_sends_figures_as_image_parts(grader, tmp_path):
    for name in ("fa.png", "fb.png"):
        Image.fromarray(np.full((6, 6, 3), 90, np.uint8)).save(tmp_path / name)
    texts = {"a": "사과 3개", "b": "사과 5개", "c": "정사각형 둘레", "d": "그림의 삼각형"}
    figures = {"c": [tmp_path / "fa.png"], "d": [tmp_path / "fb.png"]}
    cfg = JudgeConfig(base_url=grader, scale="1-5", cache=str(tmp_path / "cache.jsonl"))
    judge = LLMJudge(cfg)
    qrels = judge_qrels(texts, {"a": ["b", "c"], "c": ["d"]}, judge, figures=figures)
    judge.close()
    assert qrels == {"a": {"b": 3, "c": 1}, "c": {"d": 5}}
    body = _GradingJudge.bodies[-1]
    assert "from 1 (unrelated) to 5" in body["messages"][0]["content"]
    assert [p["type"] for p in body["messages"][-1]["content"]] == ["text", "image_url", "text", "image_url"]
    again = LLMJudge(cfg)  # the grades come back from the cache, figures included in the key
    n = len(_GradingJudge.bodies)
    assert judge_qrels(texts, {"a": ["b", "c"], "c": ["d"]}, again, figures=figures) == qrels
    assert len(_GradingJudge.bodies) == n and again.stats["cached"] == 3
    Image.fromarray(np.full((6, 6, 3), 10, np.uint8)).save(tmp_path / "fb.png")  # a changed figure is asked again
    assert again.judge(texts["c"], texts["d"], figures["c"], figures["d"]) == 5 and len(_GradingJudge.bodies) == n + 1
    again.close()


def test_the_study_scores_a_graded_truth_graded_and_binarised():
    from lookalike.catalogue.schema import LoadReport
    from lookalike.itembank.loading import Item, ItemBank, ItemBankSchema
    from lookalike.studies.itembank import StudyConfig, _markdown, evaluate_all

    ids = [f"i{n}" for n in range(8)]
    bank = ItemBank([Item(i, f"문제 {i}") for i in ids], ItemBankSchema(), LoadReport("made-up"))
    rng = np.random.default_rng(3)
    runs = {
        name: (np.array([[j for j in rng.permutation(8) if j != i] for i in range(8)]), np.zeros((8, 7)))
        for name in ("dense", "bm25", "minmax-a0.50", "rrf")
    }
    graded = {q: {d: int(rng.integers(1, 6)) for d in ids if d != q} for q in ids}
    g = Grading("1-5")
    gts = {"llm": {"qrels": graded, "grading": g, "path": "llm.qrels", "sha1": "0" * 40, "queries": 8, "pairs": 56}}
    gts["llm"] |= {"rule": "made-up grades", "grades": g.describe()}
    cfg = StudyConfig(data="made-up.csv", gts=["label"])
    results, _ = evaluate_all(bank, runs, gts, cfg)
    table = results["llm"]["table"]
    assert any(abs(t["ndcg@10"] - t["ndcg@10_binary"]) > 1e-3 for t in table.values())  # side by side, and they differ
    assert "ndcg@10_binary" in _markdown(results, cfg)
