"""The one top-k and its tie rule (score descending, then row ascending; every item tied at the k-th score
considered; −inf never returned), through each of its users: exact search, fusion, BM25 and the stores."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.retrieval.exact import exact_topk
from lookalike.retrieval.fusion import fuse, topk_from_scores
from lookalike.retrieval.topk import topk, topk_row


def _reference(scores: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Python's sort on (−score, row): the rule, written the slow obvious way."""
    idx, sc = [], []
    for row in scores:
        order = sorted((j for j in range(len(row)) if np.isfinite(row[j]) or row[j] > 0), key=lambda j: (-row[j], j))
        idx.append(order[:k])
        sc.append([float(row[j]) for j in order[:k]])
    return idx, sc


def _tied_gallery(dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A query, three gallery items better than the rest, and 120 identical items (rows 40-159) tied behind them,
    scattered among 40 worse ones before and 40 after."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal(dim).astype(np.float32)
    q /= np.linalg.norm(q)
    worse = rng.standard_normal((200, dim)).astype(np.float32)
    worse -= 2 * np.outer(worse @ q, q)  # reflected away from the query: all score below the tied block
    g = worse / np.linalg.norm(worse, axis=1, keepdims=True)
    tied = q + 0.8 * g[0]
    g[40:160] = tied / np.linalg.norm(tied)
    for j, w in ((170, 0.2), (5, 0.3), (190, 0.4)):  # better than the tied block
        v = q + w * g[1]
        g[j] = v / np.linalg.norm(v)
    return q, g


def test_topk_keeps_the_lowest_rows_of_a_long_tie_at_the_cut():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(64, 300)).astype(np.float32)  # every row: ~75 items tied at each value
    s[3, :] = 1.0  # a whole row tied
    s[5, 10:] = -np.inf  # fewer finite scores than k: padded, never returned
    for k in (1, 7, 80, 299, 300, 400):
        idx, sc = topk(s, k)
        ref_idx, ref_sc = _reference(s, k)
        assert idx.shape == sc.shape == (64, min(k, 300))
        for r in range(64):
            n = len(ref_idx[r])
            assert idx[r, :n].tolist() == ref_idx[r], (k, r)
            assert sc[r, :n].tolist() == ref_sc[r]
            assert (idx[r, n:] == -1).all() and np.isneginf(sc[r, n:]).all()
    i, v = topk_row(s[5], 20)
    assert i.tolist() == _reference(s[5:6], 20)[0][0] and sorted(i.tolist()) == list(range(10))
    assert np.isfinite(v).all()


def test_exact_topk_cuts_a_long_tie_by_row():
    """Failed before the one top-k: argpartition kept an arbitrary 7 of the 120 tied items."""
    q, g = _tied_gallery()
    for chunk in (1024, 1):
        idx, _ = exact_topk(np.stack([q, q]), g, 10, chunk=chunk)
        assert idx[0].tolist() == [170, 5, 190, *range(40, 47)]
        assert idx[1].tolist() == idx[0].tolist()
    # excluding some tied items moves the cut along the block, still by row
    idx, _ = exact_topk(q[None, :], g, 10, exclude=np.array([41]))
    assert idx[0].tolist() == [170, 5, 190, 40, *range(42, 48)]
    # a bias that ties everything: the cut is the first k rows
    idx, _ = exact_topk(q[None, :], g, 10, bias=-(g @ q))
    assert idx[0].tolist() == list(range(10))


def test_fusion_cuts_a_long_tie_by_document():
    """Failed before the one top-k (`topk_from_scores` and `fuse` used argpartition)."""
    s = np.zeros((2, 500), np.float32)
    s[:, [400, 3]] = [2.0, 1.0]  # two clear winners, then 498 documents tied at 0
    idx, _ = topk_from_scores(s, 6, exclude=np.array([0, -1]))
    assert idx.tolist() == [[400, 3, 1, 2, 4, 5], [400, 3, 0, 1, 2, 4]]
    # min-max fusion of two identical runs that both list every document: the same ties after fusion
    docs = np.arange(500)[None, :]
    run = (docs, s[:1])
    idx, _ = fuse([run, run], [0.5, 0.5], 500, 6)
    assert idx[0].tolist() == [400, 3, 0, 1, 2, 4]


def test_bm25_cuts_its_zero_score_tail_by_document():
    """BM25 scores every document that shares no term with the query 0: a long tie at the cut."""
    from lookalike.retrieval.bm25 import BM25Retriever

    docs = [f"filler text number {i}" for i in range(300)]
    docs[250] = "red shirt"
    r = BM25Retriever(docs, tokenizer=lambda texts: [t.split() for t in texts])
    idx, sc = r.search(["red shirt"], 5)
    assert idx[0].tolist() == [250, 0, 1, 2, 3] and sc[0, 0] > 0 and (sc[0, 1:] == 0).all()


@pytest.mark.slow  # PostgreSQL
def test_embedded_store_and_pgvector_cut_a_long_tie_by_id(tmp_path):
    """Passed before this change too (the embedded store's own top-k and pgvector's ORDER BY score DESC, id
    were right); kept here so the stores stay on the rule now that they cut through `topk`."""
    from store_servers import pg_url

    from lookalike.retrieval.stores import StoreItem, open_store

    q, g = _tied_gallery()
    items = [StoreItem(f"p{j:03d}", g[j]) for j in range(len(g))]
    want = ["p170", "p005", "p190", *(f"p{j:03d}" for j in range(40, 47))]
    for url in (f"embedded://{tmp_path}/e", pg_url()):
        with open_store(url, dim=g.shape[1]) as s:
            s.upsert(items)
            assert [i for i, _ in s.search(q, 10)[0]] == want, url
            batch = s.search(np.stack([q] * 12), 10)  # the embedded store's batched path
            assert all([i for i, _ in r] == want for r in batch), url
