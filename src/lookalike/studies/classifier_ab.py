"""`lookalike ab`: compare binary image classifiers on the same held-out images, honestly.

Each model's threshold is tuned on the validation images only (Youden's J) and then applied, frozen,
to the test images; every test metric carries a stratified bootstrap CI (paired across models: the
same resamples for all), ROC AUC carries a DeLong CI, and each pair of models gets a DeLong test on
AUC and McNemar's test on tuned-threshold correctness, plus the smallest difference this sample could
have detected. Flags say when a number should not be trusted.
"""

from __future__ import annotations

import json
import logging
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lookalike.classify import stats, versions
from lookalike.classify.data import LabelledImages, load_labelled, read_split, stratified_split, stratified_subsample
from lookalike.classify.models import ImageClassifier, load_classifier
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)

MIN_VAL_PER_CLASS = 30  # below this a tuned threshold rests on a handful of images


class ABConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str
    models: list[str] = Field(min_length=2)
    out_dir: str = "runs/ab"
    split: str | None = Field(None, description="split.json from finetune-classifier: use its val/test files")
    val_fraction: float = Field(0.3, gt=0, lt=1, description="without --split: share of images for thresholds")
    limit: int | None = Field(None, ge=20, description="stratified subsample of N images (val + test)")
    test_limit: int | None = Field(None, ge=10, description="stratified subsample of N test images")
    seed: int = 0
    fixed_threshold: float = Field(0.5, gt=0, lt=1)
    n_boot: int = Field(1000, ge=100)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1)
    degenerate_eps: float = Field(0.05, gt=0, lt=0.5, description="a tuned threshold within eps of 0 or 1 is flagged")
    gap_tolerance: float = Field(0.05, gt=0, description="flag |val − test| above this (AUC, accuracy)")


def _val_test(cfg: ABConfig, data: LabelledImages) -> tuple[LabelledImages, LabelledImages]:
    if cfg.split:
        sp = read_split(Path(cfg.split))
        val, test = data.select(sp["val"]), data.select(sp["test"])
    else:
        _, v, t = stratified_split(data.labels, (0.0, cfg.val_fraction, 1 - cfg.val_fraction), cfg.seed)
        val, test = data.subset(v), data.subset(t)
    if cfg.limit and cfg.limit < len(val) + len(test):
        share = len(val) / (len(val) + len(test))
        n_val = max(2, round(cfg.limit * share))
        val = val.subset(stratified_subsample(val.labels, n_val, cfg.seed))
        test = test.subset(stratified_subsample(test.labels, cfg.limit - n_val, cfg.seed))
    if cfg.test_limit and cfg.test_limit < len(test):
        test = test.subset(stratified_subsample(test.labels, cfg.test_limit, cfg.seed))
    for name, part in (("validation", val), ("test", test)):
        if len(set(part.labels.tolist())) < 2:
            raise LookalikeError(f"the {name} images need both positives and negatives (got {len(part)} of one class)")
    return val, test


def _check_leak(models: list[ImageClassifier], val: LabelledImages, test: LabelledImages) -> None:
    evaluated = set(val.sha1) | set(test.sha1)
    for m in models:
        overlap = m.training_sha1() & evaluated
        if overlap:
            raise LookalikeError(
                f"model {m.name!r} was trained on {len(overlap)} of the images it would be evaluated "
                f"on; pass --split with the split.json it was trained with"
            )


def _ci(samples: dict[str, np.ndarray], alpha: float) -> dict[str, list[float]]:
    return {k: stats.percentile_ci(v, alpha) for k, v in samples.items()}


def _model_result(cfg: ABConfig, m: ImageClassifier, yv, sv, yt, st_, boot_idx, seconds: float) -> dict:
    thr, j = stats.youden_threshold(yv, sv)
    val_pred = sv >= thr
    test_auc, se, lo, hi = stats.auc_ci(yt, st_, cfg.alpha)
    val_auc = float(stats.delong(yv, sv[None])[0][0])
    from sklearn.metrics import average_precision_score

    fixed, tuned = st_ >= cfg.fixed_threshold, st_ >= thr
    res: dict[str, Any] = {
        "name": m.name,
        "info": m.info(),
        "seconds": seconds,
        "threshold": {
            "fixed": cfg.fixed_threshold,
            "tuned": thr,
            "youden_j_val": j,
            "tuned_on": f"validation ({len(yv)} images)",
        },
        "val": {
            "n": len(yv),
            "roc_auc": val_auc,
            "pr_auc": float(average_precision_score(yv, sv)),
            "log_loss": stats.log_loss(yv, sv),
            "at_tuned": stats.threshold_metrics(yv, val_pred),
        },
        "test": {
            "n": len(yt),
            "roc_auc": test_auc,
            "roc_auc_se": se,
            "roc_auc_delong_ci": [lo, hi],
            "pr_auc": float(average_precision_score(yt, st_)),
            "log_loss": stats.log_loss(yt, st_),
            "calibration": stats.calibration(yt, st_),
            "at_fixed": stats.threshold_metrics(yt, fixed),
            "at_tuned": stats.threshold_metrics(yt, tuned),
        },
    }
    boot = {
        "roc_auc": stats.bootstrap_auc(yt, st_, boot_idx),
        "pr_auc": stats.bootstrap_average_precision(yt, st_, boot_idx),
    }
    res["test"]["bootstrap_ci"] = {
        **_ci(boot, cfg.alpha),
        "at_fixed": _ci(stats.bootstrap_threshold_metrics(yt, fixed, boot_idx), cfg.alpha),
        "at_tuned": _ci(stats.bootstrap_threshold_metrics(yt, tuned, boot_idx), cfg.alpha),
    }
    flags = []
    if thr <= cfg.degenerate_eps or thr >= 1 - cfg.degenerate_eps:
        flags.append(
            f"degenerate threshold: the validation-optimal threshold is {thr:.3g}, within "
            f"{cfg.degenerate_eps} of {'0' if thr < 0.5 else '1'} — the scores are saturated "
            f"(over-confident), so the cut rests on a few extreme scores"
        )
    pairs = {
        "roc_auc": (val_auc, test_auc),
        "accuracy_at_tuned": (res["val"]["at_tuned"]["accuracy"], res["test"]["at_tuned"]["accuracy"]),
    }
    gaps = {k: v - t for k, (v, t) in pairs.items()}
    for k, (v, t) in pairs.items():
        if abs(v - t) > cfg.gap_tolerance:
            flags.append(
                f"validation–test gap: {k} {v:.3f} on validation vs {t:.3f} on test "
                f"(gap {v - t:+.3f} > {cfg.gap_tolerance})"
            )
    if res["test"]["log_loss"] > 2 * res["val"]["log_loss"] + 0.05:
        flags.append(
            f"loss gap: test log-loss {res['test']['log_loss']:.3f} vs validation {res['val']['log_loss']:.4f}"
        )
    res["val_test_gap"] = gaps
    res["flags"] = flags
    return res


def _pair_result(cfg: ABConfig, a: dict, b: dict, yt, sa, sb, boot_idx) -> dict:
    n = len(yt)
    dl = stats.delong_test(yt, sa, sb, cfg.alpha)
    pa, pb = sa >= a["threshold"]["tuned"], sb >= b["threshold"]["tuned"]
    mc = stats.mcnemar_test(yt, pa, pb)
    acc_diff = float((pa == yt).mean() - (pb == yt).mean())
    boot_diff = (pa[boot_idx] == yt[boot_idx]).mean(1) - (pb[boot_idx] == yt[boot_idx]).mean(1)
    psi = mc["discordant"] / n
    res: dict[str, Any] = {
        "a": a["name"],
        "b": b["name"],
        "n": n,
        "roc_auc": {**dl, "mdd": stats.auc_mdd(dl["se"], cfg.alpha, cfg.power)},
        "accuracy_at_tuned": {
            "diff": acc_diff,
            "bootstrap_ci": stats.percentile_ci(boot_diff, cfg.alpha),
            "mcnemar": mc,
            "mdd": stats.mcnemar_mdd(n, psi, cfg.alpha, cfg.power),
            "n_needed_for_observed_diff": stats.mcnemar_required_n(acc_diff, psi, cfg.alpha, cfg.power),
        },
    }
    flags = []
    if dl["p_value"] >= cfg.alpha and mc["p_value"] >= cfg.alpha:
        flags.append(
            f"sample too small to separate {a['name']} and {b['name']}: with {n} test images the smallest "
            f"detectable difference ({cfg.power:.0%} power, α={cfg.alpha}) is {res['roc_auc']['mdd']:.3f} AUC "
            f"and {res['accuracy_at_tuned']['mdd']:.3f} accuracy; observed {dl['diff']:+.3f} AUC "
            f"(p={dl['p_value']:.3g}) and {acc_diff:+.3f} accuracy (p={mc['p_value']:.3g}); detecting the "
            f"observed accuracy difference needs ≈{res['accuracy_at_tuned']['n_needed_for_observed_diff']:.0f} images"
        )
    res["flags"] = flags
    return res


def run_ab(cfg: ABConfig, progress: bool = True) -> dict:
    """Score, compare and write ab.json, charts/*.png and report.html under cfg.out_dir."""
    from lookalike.provenance import provenance

    t0 = time.perf_counter()
    data = load_labelled(cfg.data)
    val, test = _val_test(cfg, data)
    t_load = time.perf_counter() - t0
    models = [load_classifier(s) for s in cfg.models]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise LookalikeError(f"model names must differ, got {names}; label them as name=spec")
    _check_leak(models, val, test)
    yv, yt = val.labels, test.labels
    boot_idx = stats.stratified_bootstrap_indices(yt, cfg.n_boot, cfg.seed)
    results, scores = [], {}
    for m in models:
        t = time.perf_counter()
        s = m.predict(val.images + test.images)
        seconds = time.perf_counter() - t
        if progress:
            logger.info(f"  scored {len(s)} images with {m.name} in {seconds:.1f} s")
        sv, st_ = s[: len(val)], s[len(val) :]
        scores[m.name] = (sv, st_)
        results.append(_model_result(cfg, m, yv, sv, yt, st_, boot_idx, seconds))
    by_name = {r["name"]: r for r in results}
    pairs = [
        _pair_result(cfg, by_name[a], by_name[b], yt, scores[a][1], scores[b][1], boot_idx)
        for a, b in combinations(names, 2)
    ]
    flags = []
    n_small = int(min((yv == 1).sum(), (yv == 0).sum()))
    if n_small < MIN_VAL_PER_CLASS:
        flags.append(
            f"thresholds were tuned on a small validation set ({len(yv)} images, {n_small} in the smaller "
            f"class): expect them to move on new data"
        )
    out = {
        "config": cfg.model_dump(),
        "provenance": {**provenance(), "classify_versions": versions()},
        "data": {
            "source": cfg.data,
            "load_report": data.report.to_dict(),
            "val": {"n": len(val), "positives": int(yv.sum())},
            "test": {"n": len(test), "positives": int(yt.sum())},
        },
        "split": {"val": val.keys, "test": test.keys},
        "models": results,
        "pairs": pairs,
        "flags": flags,
    }
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from lookalike.classify.report import write_report

    t = time.perf_counter()
    write_report(out, scores, yv, yt, out_dir)
    out["timings"] = {"load_s": t_load, "report_s": time.perf_counter() - t, "total_s": time.perf_counter() - t0}
    (out_dir / "ab.json").write_text(json.dumps(out, indent=1, default=float))
    arrays = {
        "y_val": yv,
        "y_test": yt,
        **{f"{k}__val": v[0] for k, v in scores.items()},
        **{f"{k}__test": v[1] for k, v in scores.items()},
    }
    # numpy's stub lets **arrays fill savez_compressed's allow_pickle: bool, so mypy refuses arrays there
    np.savez_compressed(out_dir / "scores.npz", **arrays)  # type: ignore[arg-type]
    return out
