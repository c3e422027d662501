"""Ground-truth builders (label, TF-IDF, LLM judge, intersection) and the judge client against a local
OpenAI-compatible test server we start here on 127.0.0.1 (no outside service)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from lookalike.catalogue.schema import LoadReport
from lookalike.errors import LookalikeError
from lookalike.itembank.groundtruth import (
    intersect_qrels,
    label_qrels,
    qrels_stats,
    read_qrels,
    tfidf_qrels,
    write_qrels,
)
from lookalike.itembank.judge import JudgeConfig, LLMJudge, judge_qrels, parse_answer
from lookalike.itembank.loading import Item, ItemBank, ItemBankSchema

TEXTS = {
    "a": "사과 3개와 배 2개가 있습니다. 과일은 모두 몇 개입니까?",
    "b": "사과 5개와 배 4개가 있습니다. 과일은 모두 몇 개입니까?",
    "c": "한 변이 4cm인 정사각형의 둘레를 구하시오.",
    "d": "한 변이 7cm인 정사각형의 둘레를 구하시오.",
    "e": "느림 사과 한 상자에 몇 개가 들어 있습니까?",
    "f": "깨짐 정사각형 그리기",
    "g": "오류 사과를 나누어 줍니다",
}


def _bank() -> ItemBank:
    labels = {"a": "add", "b": "add", "c": "geo", "d": "geo", "e": "add", "f": "geo", "g": "add"}
    return ItemBank(
        [Item(i, t, [], (labels[i],)) for i, t in TEXTS.items()], ItemBankSchema(label_field="l"), LoadReport("made-up")
    )


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions whose 'model' is a rule: alike when both questions
    mention 사과 or both mention 정사각형. Words in question A trigger server faults: 느림 = slow first
    answer, 깨짐 = an answer that is not the JSON asked for, 오류 = HTTP 500 first time."""

    seen: ClassVar[Counter] = Counter()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        assert body["temperature"] == 0 and body["messages"][0]["role"] == "system"
        user = body["messages"][-1]["content"]
        a, b = user.split("\nQuestion B: ")
        _Judge.seen[user] += 1
        first = _Judge.seen[user] == 1
        if "느림" in a and first:
            time.sleep(1.0)
        if "오류" in a and first:
            self.send_response(500)
            self.end_headers()
            return
        alike = any(w in a and w in b for w in ("사과", "정사각형"))
        content = "Sure! They look alike to me." if "깨짐" in a else json.dumps({"similar": alike})
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up on the slow answer (its timeout): expected
            self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_label_and_tfidf_qrels_roundtrip(tmp_path):
    bank = _bank()
    lab = label_qrels(bank)
    assert lab["a"] == {"b": 1, "e": 1, "g": 1} and "a" not in lab["a"]
    tf = tfidf_qrels(bank, top_n=2, threshold=0.3)
    assert tf["a"] == {"b": 1} and tf["c"] == {"d": 1}  # near-verbatim pairs clear 0.3, others do not
    assert all(q not in rel for q, rel in tf.items())
    sha = write_qrels(tmp_path / "tf.qrels", tf)
    assert read_qrels(tmp_path / "tf.qrels") == tf and len(sha) == 40
    assert qrels_stats(lab)["pairs"] == sum(len(v) for v in lab.values())
    (tmp_path / "bad.qrels").write_text("q1 0 d1\n")
    with pytest.raises(LookalikeError, match=r"bad\.qrels:1"):
        read_qrels(tmp_path / "bad.qrels")


def test_intersection_keeps_only_pairs_in_both():
    a = {"q": {"x": 1, "y": 1}, "r": {"x": 1}}
    b = {"q": {"y": 1, "z": 1}, "s": {"x": 1}}
    assert intersect_qrels(a, b) == {"q": {"y": 1}}


def test_parse_answer():
    assert parse_answer('{"similar": true}') is True
    assert parse_answer('```json\n{"similar": false}\n```') is False
    assert parse_answer("yes") is None and parse_answer('{"similar": "yes"}') is None


def test_judge_retries_counts_malformed_and_caches(server, tmp_path):
    cfg = JudgeConfig(base_url=server, timeout_s=0.5, retries=2, backoff_s=0.01, cache=str(tmp_path / "j.jsonl"))
    judge = LLMJudge(cfg)
    candidates = {"a": ["b", "c"], "c": ["d", "a"], "e": ["a"], "f": ["c"], "g": ["a"]}
    qrels = judge_qrels(TEXTS, candidates, judge)
    judge.close()
    # e (timed out once, then retried) and g (HTTP 500 once, then retried) were judged; f's answer was not JSON.
    assert qrels == {"a": {"b": 1}, "c": {"d": 1}, "e": {"a": 1}, "g": {"a": 1}}
    assert judge.stats["timeouts"] == 1 and judge.stats["http 500"] == 1 and judge.stats["retries"] == 2
    assert judge.stats["malformed answers"] == 1 and judge.stats["judged"] == 6
    asked = sum(_Judge.seen.values())
    again = LLMJudge(cfg)  # a rerun reads the cache: only the malformed pair is asked again
    assert judge_qrels(TEXTS, candidates, again) == qrels
    assert again.stats["cached"] == 6 and sum(_Judge.seen.values()) == asked + 1
    again.close()


def test_judge_gives_up_on_a_dead_endpoint_and_rejects_4xx(server):
    dead = LLMJudge(JudgeConfig(base_url="http://127.0.0.1:9/v1", retries=1, backoff_s=0.0, timeout_s=0.5))
    assert dead.judge("x", "y") is None
    assert dead.stats["connection errors"] == 2 and dead.stats["gave up"] == 1
    wrong = LLMJudge(JudgeConfig(base_url=server.replace("/v1", "/v2"), retries=0))
    with pytest.raises(LookalikeError, match="HTTP 404"):
        wrong.judge("x", "y")
