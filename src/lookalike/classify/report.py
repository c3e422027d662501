"""Charts (PNG) and one self-contained HTML page for a `lookalike ab` result."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save_figure(fig, path: Path) -> Path:
    """Lay out, write at the reports' resolution and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(res: dict, scores: dict, yt: np.ndarray, charts: Path) -> dict[str, Path]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    out = {}
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for m in res["models"]:
        fpr, tpr, _ = roc_curve(yt, scores[m["name"]][1])
        lo, hi = m["test"]["roc_auc_delong_ci"]
        ax.plot(fpr, tpr, label=f"{m['name']} AUC {m['test']['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(fontsize=7, loc="lower right")
    out["roc"] = save_figure(fig, charts / "roc.png")

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for m in res["models"]:
        p, r, _ = precision_recall_curve(yt, scores[m["name"]][1])
        ax.plot(r, p, label=f"{m['name']} AP {m['test']['pr_auc']:.3f}")
    ax.axhline(yt.mean(), color="k", ls=":", lw=0.8, label=f"prevalence {yt.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision–recall (test)")
    ax.legend(fontsize=7)
    out["pr"] = save_figure(fig, charts / "pr.png")

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for m in res["models"]:
        bins = m["test"]["calibration"]["bins"]
        ax.plot(
            [b["mean_score"] for b in bins],
            [b["fraction_positive"] for b in bins],
            "o-",
            ms=3,
            label=f"{m['name']} ECE {m['test']['calibration']['ece']:.3f}",
        )
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean score in bin", ylabel="fraction positive", title="Calibration (test)")
    ax.legend(fontsize=7)
    out["calibration"] = save_figure(fig, charts / "calibration.png")
    return out


def _histograms(res: dict, scores: dict, yt: np.ndarray, charts: Path) -> Path:
    k = len(res["models"])
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.2), squeeze=False)
    for ax, m in zip(axes[0], res["models"]):
        s = scores[m["name"]][1]
        bins = np.linspace(0, 1, 41)
        ax.hist(s[yt == 0], bins=bins, alpha=0.6, label="negative", density=True)
        ax.hist(s[yt == 1], bins=bins, alpha=0.6, label="positive", density=True)
        ax.axvline(m["threshold"]["tuned"], color="k", ls="--", lw=1, label=f"tuned {m['threshold']['tuned']:.3g}")
        ax.axvline(m["threshold"]["fixed"], color="grey", ls=":", lw=1, label=f"fixed {m['threshold']['fixed']}")
        ax.set(title=m["name"], xlabel="score (test)")
        ax.legend(fontsize=6)
    return save_figure(fig, charts / "histograms.png")


def _confusions(res: dict, charts: Path) -> Path:
    k = len(res["models"])
    fig, axes = plt.subplots(2, k, figsize=(2.8 * k, 5.2), squeeze=False)
    for col, m in enumerate(res["models"]):
        for row, which in enumerate(("at_fixed", "at_tuned")):
            c = m["test"][which]
            mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
            ax = axes[row][col]
            ax.imshow(mat, cmap="Blues")
            for (i, j), v in np.ndenumerate(mat):
                ax.text(
                    j, i, str(v), ha="center", va="center", fontsize=9, color="white" if v > mat.max() / 2 else "black"
                )
            thr = m["threshold"]["fixed" if which == "at_fixed" else "tuned"]
            ax.set(
                title=f"{m['name']} @ {thr:.3g}",
                xticks=[0, 1],
                yticks=[0, 1],
                xticklabels=["pred −", "pred +"],
                yticklabels=["true −", "true +"],
            )
    return save_figure(fig, charts / "confusion.png")


def _metric_bars(res: dict, charts: Path) -> Path:
    names = [m["name"] for m in res["models"]]
    rows = [
        ("ROC AUC", lambda m: (m["test"]["roc_auc"], m["test"]["roc_auc_delong_ci"])),
        (
            "accuracy @ tuned",
            lambda m: (m["test"]["at_tuned"]["accuracy"], m["test"]["bootstrap_ci"]["at_tuned"]["accuracy"]),
        ),
        ("F1 @ tuned", lambda m: (m["test"]["at_tuned"]["f1"], m["test"]["bootstrap_ci"]["at_tuned"]["f1"])),
        ("PR AUC", lambda m: (m["test"]["pr_auc"], m["test"]["bootstrap_ci"]["pr_auc"])),
    ]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2))
    for ax, (title, get) in zip(axes, rows):
        vals = [get(m) for m in res["models"]]
        est = np.array([v for v, _ in vals])
        err = np.array([[v - ci[0], ci[1] - v] for v, ci in vals]).T
        ax.bar(names, est, yerr=err, capsize=4, color="tab:blue", alpha=0.7)
        ax.set(title=title + " (95% CI)", ylim=(max(0, est.min() - 0.15), 1))
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    return save_figure(fig, charts / "metrics.png")


def _table(header: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _ci(v: float, ci: list[float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def write_report(res: dict, scores: dict, yv: np.ndarray, yt: np.ndarray, out_dir: Path) -> Path:
    """charts/*.png and report.html (charts embedded, so the page can be mailed alone)."""
    charts = out_dir / "charts"
    charts.mkdir(parents=True, exist_ok=True)
    pngs = {
        **_curves(res, scores, yt, charts),
        "histograms": _histograms(res, scores, yt, charts),
        "confusion": _confusions(res, charts),
        "metrics": _metric_bars(res, charts),
    }
    d = res["data"]
    model_rows = []
    for m in res["models"]:
        t, ci = m["test"], m["test"]["bootstrap_ci"]
        model_rows.append(
            [
                m["name"],
                _ci(t["roc_auc"], t["roc_auc_delong_ci"]) + " (DeLong)",
                _ci(t["pr_auc"], ci["pr_auc"]),
                f"{m['threshold']['tuned']:.4g}",
                _ci(t["at_tuned"]["accuracy"], ci["at_tuned"]["accuracy"]),
                _ci(t["at_tuned"]["precision"], ci["at_tuned"]["precision"]),
                _ci(t["at_tuned"]["recall"], ci["at_tuned"]["recall"]),
                _ci(t["at_tuned"]["f1"], ci["at_tuned"]["f1"]),
                _ci(t["at_fixed"]["accuracy"], ci["at_fixed"]["accuracy"]),
                _ci(t["at_fixed"]["f1"], ci["at_fixed"]["f1"]),
                f"{t['log_loss']:.3f}",
                f"{t['calibration']['ece']:.3f}",
                f"{t['calibration']['brier']:.3f}",
                f"{m['val']['roc_auc']:.3f}",
                f"{m['val']['log_loss']:.4f}",
                f"{m['seconds']:.1f}",
            ]
        )
    pair_rows = []
    for p in res["pairs"]:
        a, mc = p["roc_auc"], p["accuracy_at_tuned"]
        pair_rows.append(
            [
                f"{p['a']} − {p['b']}",
                f"{a['diff']:+.3f} [{a['ci'][0]:+.3f}, {a['ci'][1]:+.3f}]",
                _p(a["p_value"]),
                f"{a['mdd']:.3f}",
                f"{mc['diff']:+.3f} [{mc['bootstrap_ci'][0]:+.3f}, {mc['bootstrap_ci'][1]:+.3f}]",
                f"{mc['mcnemar']['a_only_correct']}/{mc['mcnemar']['b_only_correct']}",
                _p(mc["mcnemar"]["p_value"]),
                f"{mc['mdd']:.3f}",
            ]
        )
    flags = (
        res["flags"]
        + [f"{m['name']}: {f}" for m in res["models"] for f in m["flags"]]
        + [f for p in res["pairs"] for f in p["flags"]]
    )
    skipped = res["data"]["load_report"]["skipped"]
    img = "".join(
        f'<h3>{k}</h3><img src="data:image/png;base64,{base64.b64encode(v.read_bytes()).decode()}">'
        for k, v in pngs.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lookalike ab</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#f3f3f3}}
.flag{{color:#a00}}img{{max-width:100%}}</style></head><body>
<h1>A/B comparison of {len(res["models"])} classifiers</h1>
<p>Data: {html.escape(d["source"])}; validation {d["val"]["n"]} images ({d["val"]["positives"]} positive) for
thresholds only; test {d["test"]["n"]} images ({d["test"]["positives"]} positive). Skipped while loading:
{html.escape(str(skipped) if skipped else "none")}. Bootstrap: {res["config"]["n_boot"]} stratified resamples,
the same for every model; intervals are {1 - res["config"]["alpha"]:.0%}.</p>
<h2>Flags</h2>{"".join(f'<p class="flag">⚠ {html.escape(f)}</p>' for f in flags) or "<p>none</p>"}
<h2>Models (test set)</h2>
{
        _table(
            [
                "model",
                "ROC AUC",
                "PR AUC",
                "tuned thr (val)",
                "acc @tuned",
                "precision @tuned",
                "recall @tuned",
                "F1 @tuned",
                f"acc @{res['config']['fixed_threshold']}",
                f"F1 @{res['config']['fixed_threshold']}",
                "log-loss",
                "ECE",
                "Brier",
                "val AUC",
                "val log-loss",
                "scoring s",
            ],
            model_rows,
        )
    }
<h2>Pairwise tests (test set)</h2>
{
        _table(
            [
                "a − b",
                "ΔAUC [DeLong CI]",
                "DeLong p",
                "AUC MDD",
                "Δacc @tuned [bootstrap CI]",
                "only a / only b correct",
                "McNemar p",
                "acc MDD",
            ],
            pair_rows,
        )
    }
<p>MDD: minimum detectable difference at {res["config"]["power"]:.0%} power, α={res["config"]["alpha"]}
(DeLong: (z<sub>α/2</sub>+z<sub>β</sub>)·SE(ΔAUC); McNemar: Connor 1987 with the observed discordance).</p>
<h2>Charts</h2>{img}
<h2>Model details</h2><pre>{html.escape(json.dumps([m["info"] for m in res["models"]], indent=1))}</pre>
<h2>Provenance</h2><pre>{html.escape(json.dumps(res["provenance"], indent=1))}</pre>
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
