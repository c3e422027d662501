"""Exact search, per-query metrics, and the evaluator's figures recomputed by trec_eval (pytrec_eval) from
the exported TREC run and qrels files (the module claims trec_eval / ranx semantics; this holds it to that)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from lookalike.catalogue.schema import ImageRef, Product
from lookalike.evaluation.evaluator import SELF_EXCLUDED, RetrievalEvaluator, relevance_keys
from lookalike.evaluation.metrics import aggregate, per_query_metrics
from lookalike.evaluation.trec import write_run
from lookalike.retrieval.exact import exact_topk
from lookalike.retrieval.hubness import hub_penalty


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- exact_topk


def _reference_topk(q: np.ndarray, g: np.ndarray, k: int, exclude: np.ndarray | None = None):
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    if exclude is not None:
        for i, j in enumerate(exclude):
            if j >= 0:
                sims[i, j] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


@pytest.mark.parametrize("chunk", [1024, 7])
def test_exact_topk_matches_full_argsort(chunk):
    rng = np.random.default_rng(0)
    q, g = _unit(rng, 50, 16), _unit(rng, 200, 16)
    idx, sc = exact_topk(q, g, 20, chunk=chunk)
    ref_idx, ref_sc = _reference_topk(q, g, 20)
    assert idx.shape == sc.shape == (50, 20)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sc, ref_sc, atol=1e-6)
    assert np.all(np.diff(sc, axis=1) <= 0)


@pytest.mark.parametrize("chunk", [1024, 7])
def test_exact_topk_exclude(chunk):
    rng = np.random.default_rng(1)
    g = _unit(rng, 120, 16)
    q = g[:40] + 0.01 * _unit(rng, 40, 16)  # each query's own gallery item would otherwise rank first
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    exclude = np.arange(40)
    exclude[::5] = -1  # -1: nothing excluded for that query
    idx, sc = exact_topk(q, g, 15, exclude=exclude, chunk=chunk)
    ref_idx, ref_sc = _reference_topk(q, g, 15, exclude)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sc, ref_sc, atol=1e-6)
    for i, j in enumerate(exclude):
        if j >= 0:
            assert j not in idx[i]
        else:
            assert idx[i, 0] == i  # not excluded → its own (near-duplicate) item comes first
    assert np.isfinite(sc).all()


@pytest.mark.parametrize("chunk", [1024, 7])
def test_exact_topk_bias_ranks_by_shifted_scores(chunk):
    rng = np.random.default_rng(3)
    q, g = _unit(rng, 30, 16), _unit(rng, 90, 16)
    bias = (0.3 * rng.standard_normal(90)).astype(np.float32)
    idx, sc = exact_topk(q, g, 12, chunk=chunk, bias=bias)
    ref_idx, ref_sc = _reference_topk(np.hstack([q, np.ones((30, 1), np.float32)]), np.hstack([g, bias[:, None]]), 12)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sc, ref_sc, atol=1e-5)
    assert not np.array_equal(idx, exact_topk(q, g, 12, chunk=chunk)[0])


def test_hub_penalty_is_mean_of_k_nearest_bank_cosines_and_demotes_hubs():
    rng = np.random.default_rng(4)
    bank, g = _unit(rng, 400, 32), _unit(rng, 60, 32)
    bank[:200] = g[0] + 0.15 * _unit(rng, 200, 32)  # many queries crowd around gallery item 0: a hub
    bank[:200] /= np.linalg.norm(bank[:200], axis=1, keepdims=True)
    pen = hub_penalty(g, bank, k=10, chunk=7)
    ref = np.sort(g.astype(np.float64) @ bank.T.astype(np.float64), axis=1)[:, -10:].mean(axis=1)
    np.testing.assert_allclose(pen, ref, atol=1e-5)
    assert pen.argmax() == 0
    assert hub_penalty(g, bank, k=10_000).shape == (60,)  # k beyond the bank: every bank query counts
    # The hub has the largest penalty, so for any query it can only lose places, and it does for some.
    q = bank[200:]
    rank_plain = np.argwhere(exact_topk(q, g, 60)[0] == 0)[:, 1]
    rank_corrected = np.argwhere(exact_topk(q, g, 60, bias=-1.0 * pen)[0] == 0)[:, 1]
    assert (rank_corrected >= rank_plain).all() and (rank_corrected > rank_plain).any()


def test_exact_topk_clamps_k():
    rng = np.random.default_rng(2)
    q, g = _unit(rng, 5, 8), _unit(rng, 6, 8)
    assert exact_topk(q, g, 100)[0].shape == (5, 6)
    idx, sc = exact_topk(q, g, 100, exclude=np.arange(5))
    assert idx.shape == (5, 5) and np.isfinite(sc).all()
    for i in range(5):
        assert i not in idx[i]
        assert sorted(idx[i].tolist()) == [j for j in range(6) if j != i]


# --------------------------------------------------------------------------------------- per_query_metrics


def test_per_query_metrics_hand_computed():
    rel = np.zeros((2, 10), bool)
    rel[0, [1, 3]] = True  # relevant at ranks 2 and 4, 3 relevant in the gallery
    n_rel = np.array([3, 0])  # second query: nothing relevant anywhere
    m = per_query_metrics(rel, n_rel, [1, 5, 10])
    expected = {
        "hit@1": 0.0,
        "hit@5": 1.0,
        "hit@10": 1.0,
        "precision@1": 0.0,
        "precision@5": 2 / 5,
        "precision@10": 2 / 10,
        "recall@1": 0.0,
        "recall@5": 2 / 3,
        "recall@10": 2 / 3,
        "mrr": 1 / 2,
        "ndcg@10": (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3) + 1 / np.log2(4)),
        "map": (1 / 2 + 2 / 4) / 3,
    }
    assert set(m) == set(expected)
    for name, value in expected.items():
        assert m[name][0] == pytest.approx(value, abs=1e-12), name
        assert m[name][1] == 0.0, name
    agg = aggregate(m, np.array([True, False]))
    assert agg["n_queries"] == 1 and agg["map"] == pytest.approx(1 / 3)
    assert aggregate(m)["n_queries"] == 2 and aggregate(m)["mrr"] == pytest.approx(0.25)


def test_per_query_metrics_precision_beyond_depth_divides_by_k():
    # trec_eval's P@k divides by k even when fewer than k items were retrieved.
    rel = np.ones((1, 3), bool)
    m = per_query_metrics(rel, np.array([5]), [10])
    assert m["precision@10"][0] == pytest.approx(0.3)
    assert m["recall@10"][0] == pytest.approx(0.6)
    assert m["ndcg@10"][0] == pytest.approx(1.0)  # idcg over min(R, depth)=3 positions
    assert m["map"][0] == pytest.approx(3 / 5)


# --------------------------------------------------------------- evaluator vs trec_eval on exported files


def test_write_run_keeps_close_float32_scores_distinct(tmp_path):
    # Adjacent float32 values (one ulp apart) must stay distinct and ordered in the file, else ranx and
    # trec_eval re-sort them by their own tie rules and no longer see the ranking we scored.
    a = np.float32(0.21666351)
    scores = np.array([[a, np.nextafter(a, np.float32(0)), np.float32(1e-5), np.float32(-0.3)]], np.float32)
    write_run(tmp_path / "t.run", ["q"], ["d0", "d1", "d2", "d3"], np.array([[0, 1, 2, 3]]), scores, "x")
    fields = [line.split() for line in (tmp_path / "t.run").read_text().splitlines()]
    assert [f[2] for f in fields] == ["d0", "d1", "d2", "d3"] and [f[3] for f in fields] == ["1", "2", "3", "4"]
    parsed = np.array([float(f[4]) for f in fields])
    np.testing.assert_array_equal(parsed.astype(np.float32), scores[0])  # exact float32 round trip
    assert np.all(np.diff(parsed) < 0)


FIELDS = {
    "colour": ["red", "blue", "black"],
    "fit": ["loose", "tight", "regular", "oversized"],
    "style": ["casual", "formal", "sport", "street", "retro"],
}
KS = [1, 5, 10]
DEPTH = 100


def _products(rng: np.random.Generator, n: int) -> list[Product]:
    combos = list(itertools.product(*FIELDS.values()))
    # Every attribute combination at least twice, so every query has a relevant item even with its own
    # photo excluded (trec_eval scores only queries with a relevant item); the rest random.
    rows = combos * 2 + [combos[i] for i in rng.integers(0, len(combos), n - 2 * len(combos))]
    rows = [rows[i] for i in rng.permutation(n)]
    return [
        Product(id=f"p{i:04d}", image=ImageRef(Path(f"/nonexistent/p{i:04d}.jpg")), attributes=dict(zip(FIELDS, row)))
        for i, row in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    rng = np.random.default_rng(42)
    n, d = 300, 16
    products = _products(rng, n)
    # Gallery "images" cluster loosely by attributes so the metrics are neither 0 nor 1.
    keys = relevance_keys(products, list(FIELDS))
    centres = rng.standard_normal((keys.max() + 1, d))
    gallery = centres[keys] + 1.5 * rng.standard_normal((n, d))
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    queries = centres[keys] + 1.5 * rng.standard_normal((n, d))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    anchors = rng.random(n) < 0.3
    ev = RetrievalEvaluator(
        products,
        {"instance": None, "attribute": list(FIELDS)},
        KS,
        depth=DEPTH,
        anchors=anchors,
        category_field="colour",
    )
    out = tmp_path_factory.mktemp("eval")
    # text → image gets the same queries ranked with a per-image score offset (as the hubness correction does).
    bias = (0.2 * rng.standard_normal(n)).astype(np.float32)
    results = ev(
        {"json_to_image": queries, "image_to_image": gallery, "text_to_image": queries},
        gallery,
        out_dir=out,
        biases={"text_to_image": bias},
    )
    return results, out, anchors, products


# trec_eval's names; the run holds the top-DEPTH, so its MRR and MAP are MRR@DEPTH and MAP@DEPTH.
TREC_NAME = {
    **{f"hit@{k}": f"success_{k}" for k in KS},
    **{f"precision@{k}": f"P_{k}" for k in KS},
    **{f"recall@{k}": f"recall_{k}" for k in KS},
    "mrr": "recip_rank",
    "ndcg@10": "ndcg_cut_10",
    "map": "map",
}


def _trec_eval_per_query(out: Path, task: str, qrels_file: str) -> dict[str, dict[str, float]]:
    """trec_eval itself (C, via pytrec_eval; ranx needs ~10 s of JIT per process) on the written files."""
    import pytrec_eval

    with open(out / qrels_file) as q, open(out / f"{task}.run") as r:
        qrels, run = pytrec_eval.parse_qrel(q), pytrec_eval.parse_run(r)
    per_query = pytrec_eval.RelevanceEvaluator(
        qrels, {"success.1,5,10", "P.1,5,10", "recall.1,5,10", "recip_rank", "ndcg_cut.10", "map"}
    ).evaluate(run)
    return {m: {q: v[m] for q, v in per_query.items()} for m in TREC_NAME.values()}


@pytest.mark.parametrize("task", ["json_to_image", "image_to_image", "text_to_image"])
def test_evaluator_matches_trec_eval(evaluated, task):
    results, out, anchors, products = evaluated
    res = results[task]
    assert res["run_file"] == f"{task}.run" and res["run_depth"] == DEPTH
    assert res["self_excluded"] == (task in SELF_EXCLUDED)
    definitions = ["attribute"] if task in SELF_EXCLUDED else ["instance", "attribute"]
    assert [k for k in ("instance", "attribute") if k in res] == definitions  # no instance block for image→image
    ids = [p.id for p in products]
    cats = np.array([p.value("colour") for p in products])

    # The written run must keep exact_topk's order: no two results of a query share a written score,
    # or trec_eval would be free to reorder them.
    lines = (out / f"{task}.run").read_text().split("\n")[:-1]
    per_q: dict[str, list[float]] = {}
    for line in lines:
        q, _, _, _, s, _ = line.split()
        per_q.setdefault(q, []).append(float(s))
    assert len(per_q) == len(products) and all(len(v) == DEPTH for v in per_q.values())
    assert all(np.all(np.diff(v) < 0) for v in per_q.values())
    if task in SELF_EXCLUDED:
        assert not any(line.split()[0] == line.split()[2] for line in lines)

    for name in definitions:
        block = res[name]
        assert block["queries_without_relevant"] == 0
        expected_qrels = f"{task}.{name}.qrels" if task in SELF_EXCLUDED else f"{name}.qrels"
        assert block["qrels_file"] == expected_qrels
        trec = _trec_eval_per_query(out, task, block["qrels_file"])
        for ours, theirs in TREC_NAME.items():
            r = np.array([trec[theirs][q] for q in ids])
            assert block["all"][ours] == pytest.approx(r.mean(), abs=1e-6), (task, name, ours)
            assert block["anchor"][ours] == pytest.approx(r[anchors].mean(), abs=1e-6), (task, name, ours)
            for c, sub in block["per_category"].items():
                assert sub[ours] == pytest.approx(r[cats == c].mean(), abs=1e-6), (task, name, ours, c)
        assert block["all"]["n_queries"] == len(products)
        assert block["anchor"]["n_queries"] == int(anchors.sum())
        assert sum(sub["n_queries"] for sub in block["per_category"].values()) == len(products)
        # Not a degenerate fixture: some queries succeed, some fail.
        assert 0 < block["all"]["hit@10"] < 1 and 0 < block["all"]["map"] < 1


def test_evaluator_ranks_a_biased_task_by_the_shifted_scores(evaluated):
    results, out, _, _ = evaluated
    plain, biased = ((out / f"{t}.run").read_text().split("\n")[:-1] for t in ("json_to_image", "text_to_image"))
    assert [ln.split()[2] for ln in plain] != [ln.split()[2] for ln in biased]
    assert results["text_to_image"]["attribute"]["all"] != results["json_to_image"]["attribute"]["all"]


def test_qrels_files(evaluated):
    results, out, _, products = evaluated
    n = len(products)
    inst = (out / "instance.qrels").read_text().split("\n")[:-1]
    assert len(inst) == n and all(line.split()[0] == line.split()[2] for line in inst)
    attr = (out / "attribute.qrels").read_text().split("\n")[:-1]
    self_ex = (out / "image_to_image.attribute.qrels").read_text().split("\n")[:-1]
    assert len(attr) - len(self_ex) == n  # exactly each query's own photo removed
    assert not any(line.split()[0] == line.split()[2] for line in self_ex)
    assert not (out / "image_to_image.instance.qrels").exists()
    assert "similarity" in results["json_to_image"] and "similarity" not in results["image_to_image"]


def test_anchor_group_size():
    rng = np.random.default_rng(3)
    products = _products(rng, 150)
    g = _unit(rng, 150, 8)
    for anchors in (rng.random(150) < 0.2, np.zeros(150, bool)):
        ev = RetrievalEvaluator(products, {"attribute": list(FIELDS)}, KS, depth=20, anchors=anchors)
        res = ev({"json_to_image": _unit(rng, 150, 8), "image_to_image": g}, g)
        for task in ("json_to_image", "image_to_image"):
            assert res[task]["attribute"]["anchor"]["n_queries"] == int(anchors.sum())
    ev = RetrievalEvaluator(products, {"attribute": list(FIELDS)}, KS, depth=20)
    assert "anchor" not in ev({"json_to_image": g}, g)["json_to_image"]["attribute"]
