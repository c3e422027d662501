"""LiveBM25 takes writes and still scores exactly as bm25s does when rebuilt from scratch on the live documents."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.retrieval.bm25 import LiveBM25


def _bm25s(docs: dict[str, list[str]], query: list[str]) -> dict[str, float]:
    import bm25s

    ids = list(docs)
    index = bm25s.BM25(k1=1.5, b=0.75)
    index.index([docs[i] for i in ids], show_progress=False)
    return dict(zip(ids, index.get_scores(query).tolist()))


def _live(index: LiveBM25, query: list[str]) -> dict[str, float]:
    sc = index.scores(query)
    return {index.id_of(s): float(sc[s]) for s in range(index.slots) if index.id_of(s) is not None}


@pytest.mark.parametrize("writes", [50, 2500])  # 2,500: enough removals to compact the postings
def test_scores_equal_a_fresh_bm25s_index_after_adds_replaces_and_removes(writes):
    rng = np.random.default_rng(writes)
    vocab = [f"t{i}" for i in range(40)]
    live, docs = LiveBM25(), {}
    for _ in range(writes):
        doc = f"d{rng.integers(0, max(10, writes // 3))}"
        if doc in docs and rng.random() < 0.4:
            live.remove(doc)
            del docs[doc]
        else:
            tokens = list(rng.choice(vocab, int(rng.integers(1, 12))))
            live.put(doc, tokens)  # a new document, or a replacement of the one with this id
            docs[doc] = tokens
    assert len(live) == len(docs) and set(docs) == {live.id_of(s) for s in range(live.slots)} - {None}
    if writes > 1000:
        assert live.slots < 2 * len(docs) + 1025  # compacted: dead slots never outnumber the bound
    for q in (["t1"], ["t2", "t3", "t2"], ["t5", "unknown"], ["t39", "t0", "t7", "t11"]):
        want, got = _bm25s(docs, q), _live(live, q)
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[d] for d in want], list(want.values()), rtol=1e-5, atol=1e-6)


def test_removed_and_unknown_documents():
    live = LiveBM25()
    live.put("a", ["x", "y"])
    live.put("b", ["x"])
    assert live.remove("a") and not live.remove("a") and "a" not in live
    assert live.tokens_of("b") == ["x"] and live.tokens_of("a") is None
    sc = live.scores(["y"])
    assert sc.shape == (live.slots,) and not sc.any()  # "y" lived only in the removed document
    assert float(live.scores(["x"])[live.slot_of("b")]) > 0
