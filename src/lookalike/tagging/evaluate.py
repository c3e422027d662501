"""The tagging figures of a split: per field and method, accuracy, macro-F1, top-3 accuracy, expected
calibration error before and after calibration, and how many products can be tagged at 95% accuracy.

A product whose stored value was never seen in training counts as an error (no tagger can name it); a
product without a value for a field is left out of that field's figures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lookalike.tagging.calibration import coverage_at, ece
from lookalike.tagging.tagger import Labelled, Tagger, _values

TARGET = 0.95


def _single(P: np.ndarray, y: np.ndarray, unseen: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    pred = P.argmax(1)
    top3 = np.argsort(-P, 1)[:, :3]
    conf = P.max(1)
    correct = (pred == y).astype(float)
    cov, thr = coverage_at(conf, correct, TARGET)
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "top3_accuracy": float((top3 == y[:, None]).any(1).mean()),
        "ece": ece(conf, correct),
        "coverage_at_95": cov,
        "threshold_at_95": thr,
    }


def _multi(P: np.ndarray, Y: np.ndarray, unseen: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    pred = (P >= 0.5).astype(int)
    exact = ((pred == Y).all(1) & ~unseen).astype(float)
    # a product's confidence in its whole set: its least sure decision
    conf = np.where(pred == 1, P, 1 - P).min(1)
    cov, thr = coverage_at(conf, exact, TARGET)
    top3 = np.argsort(-P, 1)[:, :3]
    hit3 = np.take_along_axis(Y, top3, 1).any(1) | (Y.sum(1) == 0)
    flat_conf = np.where(pred == 1, P, 1 - P).ravel()
    return {
        "accuracy": float(exact.mean()),
        "macro_f1": float(f1_score(Y, pred, average="macro", zero_division=0)),
        "top3_accuracy": float(hit3.mean()),
        "ece": ece(flat_conf, (pred == Y).ravel().astype(float)),
        "coverage_at_95": cov,
        "threshold_at_95": thr,
    }


def _figures(score, P: np.ndarray, P_cal: np.ndarray, y: np.ndarray, unseen: np.ndarray) -> dict:
    """A method's figures, its ECE and coverage also after calibration (a value unseen in training matches
    no prediction: it counts as an error)."""
    raw, cal = score(P, y, unseen), score(P_cal, y, unseen)
    return {**raw, "ece_calibrated": cal["ece"], "coverage_at_95_calibrated": cal["coverage_at_95"]}


def tagging_figures(tagger: Tagger, data: Labelled, exclude_ids: list[str | None] | None = None) -> dict:
    """{field: {"n": products, "methods": {method: figures, "ece_calibrated": …}, "combined": …}}."""
    probs = tagger.method_probs(data, exclude_ids)
    out: dict[str, dict] = {}
    for name, by_method in probs.items():
        f = tagger.fields[name]
        has = np.array([bool(_values(a, name)) for a in data.attributes])
        if not has.any():
            continue
        rows = np.nonzero(has)[0]
        y = f.encode([data.attributes[i] for i in rows])
        score: Callable[[np.ndarray, np.ndarray, np.ndarray], dict]
        if f.multi:
            # values never seen in training: they are part of the truth, so the set is wrong whatever is said
            unseen = np.array([any(v not in f.classes for v in _values(data.attributes[i], name)) for i in rows])
            score = _multi
        else:
            unseen = y < 0
            score = _single

        methods = {m: _figures(score, P[rows], f.calibrated(m, P)[rows], y, unseen) for m, P in by_method.items()}
        before, after = f.combine(by_method, calibrated=False), f.combine(by_method)
        methods["combined"] = _figures(score, before[rows], after[rows], y, unseen)
        out[name] = {
            "n": len(rows),
            "unseen_values": int(unseen.sum()),
            "multi_label": f.multi,
            "weights": f.weights,
            "methods": methods,
        }
    return out


def accuracy_by_group(tagger: Tagger, data: Labelled, groups: list[str]) -> dict[str, dict]:
    """Per group (e.g. K-Fashion's style), each field's accuracy (list fields: the exact set) and the number of
    products it was measured on: {group: {"n": …, "accuracy": {field: …}}}."""
    probs = tagger.predict(data)
    out: dict[str, dict] = {}
    for g in sorted(set(groups)):
        rows = np.array([i for i, x in enumerate(groups) if x == g])
        acc = {}
        for name, P in probs.items():
            f = tagger.fields[name]
            has = [i for i in rows if _values(data.attributes[i], name)]
            if not has:
                continue
            attrs = [data.attributes[i] for i in has]
            if f.multi:
                truth = [set(_values(a, name)) for a in attrs]
                said = [{f.classes[j] for j in np.nonzero(P[i] >= 0.5)[0]} for i in has]
                acc[name] = float(np.mean([s == t for s, t in zip(said, truth)]))
            else:
                acc[name] = float((P[has].argmax(1) == f.encode(attrs)).mean())
        out[g] = {"n": len(rows), "accuracy": acc}
    return out
