"""BM25 with Kiwi morphemes: particles and endings do not block matches; scores agree with bm25s."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.retrieval.bm25 import BM25Retriever, KiwiTokenizer

DOCS = [
    "정팔각형의 둘레는 몇 cm입니까?",
    "사과가 3개 있고 배가 5개 있습니다. 과일은 모두 몇 개입니까?",
    "한 변이 4cm인 정팔각형이 있습니다. 둘레를 구하시오.",
    "민수는 구슬을 12개 가지고 있었습니다.",
]


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever(DOCS)


def test_tokenizer_keeps_content_morphemes(bm25):
    toks = bm25.doc_tokens[0]
    assert {"둘레", "cm"} <= set(toks) and {"둘레", "cm", "정팔각형"} <= set(bm25.doc_tokens[2])
    assert not any(t in toks for t in ("의", "는", "?"))  # particles and punctuation dropped
    assert "3" not in KiwiTokenizer(numbers=False)(["사과 3개"])[0]


def test_particle_variants_match_and_self_is_excluded(bm25):
    idx, sc = bm25.search(["정팔각형이 있습니다. 둘레는?"], k=2)
    assert set(idx[0].tolist()) == {0, 2} and sc[0, 0] > 0
    idx, _ = bm25.search(query_tokens=[bm25.doc_tokens[2]], k=3, exclude=np.array([2]))
    assert idx[0, 0] == 0 and 2 not in idx[0].tolist()


def test_scores_match_lucene_bm25_formula(bm25):
    """Lucene BM25: idf = ln(1 + (N - df + .5)/(df + .5)), tf part tf / (tf + k1(1 - b + b·dl/avgdl)), no (k1+1)."""
    q = KiwiTokenizer()(["구슬 둘레"])[0]
    docs = bm25.doc_tokens
    n, avgdl = len(docs), np.mean([len(d) for d in docs])
    expected = np.zeros(n)
    for t in set(q):
        df = sum(t in d for d in docs)
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        for j, d in enumerate(docs):
            tf = d.count(t)
            expected[j] += idf * tf / (tf + 1.5 * (0.25 + 0.75 * len(d) / avgdl))
    np.testing.assert_allclose(bm25.scores(["구슬 둘레"])[0], expected, rtol=1e-5)
    assert (bm25.scores(["zzz없는말"]) == 0).all()
