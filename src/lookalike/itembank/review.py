"""Expert review of the ground truth: a review pack out (an HTML form and a CSV of query–candidate pairs), the
experts' grades back in as a graded "manual" qrels, and each automatic ground truth's agreement with them.

Export samples queries (seeded; `stratify="label"` takes them in turn from each label, so small classes are
reviewed too) and pairs each with its candidates: the top-`pool` of dense, BM25 and TF-IDF, deduplicated, in
a seeded shuffle so the order says nothing about any retriever. The form shows each question and candidate
with its text and figures (embedded, so the file works offline) and a 1–5 scale per pair; its button saves
the CSV that `review import` reads (the CSV can also be filled in a spreadsheet).

Agreement is measured on the reviewed pairs only: an expert calls a pair relevant from grade 3 on (the
threshold is a parameter); an automatic GT calls it relevant when the pair is in its qrels at or above its
own threshold. Cohen's κ (scikit-learn) corrects the raw agreement for chance; precision is the share of the
GT's relevant pairs the experts call relevant, recall the share of the experts' relevant pairs the GT has.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import mimetypes
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.itembank.groundtruth import Qrels
from lookalike.itembank.loading import ItemBank

COLUMNS = ["pair_id", "query_id", "candidate_id", "query_text", "candidate_text", "grade", "reviewer", "note"]
SCALE = {1: "unrelated", 2: "same topic only", 3: "same kind, other method", 4: "nearly the same", 5: "same way"}


def sample_queries(bank: ItemBank, n: int, seed: int, stratify: str | None = None) -> list[int]:
    """Rows of `n` seeded queries; with stratify="label", taken in turn from each label (shuffled within)."""
    if n < 1:
        raise LookalikeError(f"--sample must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        return sorted(rng.choice(len(bank), min(n, len(bank)), replace=False).tolist())
    if stratify != "label":
        raise LookalikeError(f"--stratify takes 'label', got {stratify!r}")
    labels = bank.label_of()
    if not any(labels):
        raise LookalikeError(f"{bank.report.source}: no labels loaded, so --stratify label has nothing to use")
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    queues = [list(rng.permutation(rows)) for _, rows in sorted(groups.items())]
    out: list[int] = []
    while len(out) < min(n, len(bank)):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop(0)))
    return sorted(out)


def candidates(runs: dict[str, np.ndarray], rows: list[int], pool: int, seed: int) -> dict[int, list[int]]:
    """Each query row's candidates: the top-`pool` of every run (row → ranked rows), deduplicated, shuffled."""
    rng = np.random.default_rng(seed + 1)
    out = {}
    for i in rows:
        cand = list(dict.fromkeys(int(j) for idx in runs.values() for j in idx[i, :pool] if j >= 0 and j != i))
        out[i] = [cand[j] for j in rng.permutation(len(cand))]
    return out


def _figure_tags(paths: list[Path]) -> str:
    tags = []
    for p in paths:
        mime = mimetypes.guess_type(str(p))[0] or "image/png"
        data = base64.b64encode(Path(p).read_bytes()).decode()
        tags.append(f'<img src="data:{mime};base64,{data}" alt="{html.escape(Path(p).name)}">')
    return "".join(tags)


_PAGE = """<!doctype html>
<html lang="ko"><head><meta charset="utf-8"><title>Item-bank review</title>
<style>
body{{font-family:sans-serif;max-width:60em;margin:2em auto}} .q{{border-top:3px solid #333;margin-top:2em}}
.c{{border-left:4px solid #ccc;padding:.3em .8em;margin:.8em 0}} img{{max-height:12em;margin:.3em}}
label{{margin-right:1em;white-space:nowrap}}
</style></head><body>
<h1>Item-bank review: {n_pairs} pairs, {n_queries} questions</h1>
<p>For each candidate, how alike is it to the question? {scale}. Reviewer:
<input id="reviewer" size="20"> <button onclick="save()">Save verdicts (CSV)</button></p>
<form id="f">{body}</form>
<script>
const PAIRS = {pairs};
function cell(v) {{ v = String(v ?? ""); return /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
function save() {{
  const f = document.getElementById("f"), who = document.getElementById("reviewer").value;
  const rows = [{columns}.join(",")];
  for (const p of PAIRS) {{
    const g = f.querySelector(`input[name="${{p.pair_id}}"]:checked`);
    const note = f.querySelector(`[name="note-${{p.pair_id}}"]`).value;
    rows.push([p.pair_id, p.query_id, p.candidate_id, p.query_text, p.candidate_text, g ? g.value : "", who, note]
      .map(cell).join(","));
  }}
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob(["\\ufeff" + rows.join("\\n") + "\\n"], {{type: "text/csv"}}));
  a.download = "review.csv"; a.click();
}}
</script></body></html>
"""


def export_pack(
    bank: ItemBank, rows: list[int], cands: dict[int, list[int]], out: Path, config: dict
) -> dict[str, object]:
    """Write out/review.html, out/review.csv and out/review.json; returns what review.json holds."""
    out.mkdir(parents=True, exist_ok=True)
    items = bank.items
    pairs: list[dict[str, str]] = []
    for i in rows:
        for j in cands[i]:
            pairs.append(
                {
                    "pair_id": f"p{len(pairs) + 1:04d}",
                    "query_id": items[i].id,
                    "candidate_id": items[j].id,
                    "query_text": items[i].text,
                    "candidate_text": items[j].text,
                }
            )
    with open(out / "review.csv", "w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows({**p, "grade": "", "reviewer": "", "note": ""} for p in pairs)
    blocks, n = [], 0
    for i in rows:
        it = items[i]
        blocks.append(
            f'<div class="q"><h2>{html.escape(it.id)}</h2><p>{html.escape(it.text)}</p>{_figure_tags(it.images)}'
        )
        for j in cands[i]:
            p, c = pairs[n], items[j]
            n += 1
            radios = "".join(
                f'<label><input type="radio" name="{p["pair_id"]}" value="{g}"> {g} {html.escape(t)}</label>'
                for g, t in SCALE.items()
            )
            blocks.append(
                f'<div class="c"><b>{html.escape(c.id)}</b><p>{html.escape(c.text)}</p>{_figure_tags(c.images)}'
                f'<div>{radios}</div><input name="note-{p["pair_id"]}" placeholder="note" size="60"></div>'
            )
        blocks.append("</div>")
    scale = "; ".join(f"{g} = {t}" for g, t in SCALE.items())
    page = _PAGE.format(
        n_pairs=len(pairs),
        n_queries=len(rows),
        scale=html.escape(scale),
        body="".join(blocks),
        pairs=json.dumps(pairs, ensure_ascii=False).replace("</", "<\\/"),
        columns=json.dumps(COLUMNS),
    )
    (out / "review.html").write_text(page, encoding="utf-8")
    meta = {"queries": len(rows), "pairs": len(pairs), **config}
    (out / "review.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def read_verdicts(path: Path) -> tuple[Qrels, dict[str, int]]:
    """The graded pairs of a filled review CSV (grades 1–5; blank = not reviewed, counted), as qrels. Two
    reviewers of one pair: the mean grade, rounded half up. A grade outside 1–5 names its line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LookalikeError(f"cannot read review file {path}: {e}") from None
    grades: dict[tuple[str, str], list[int]] = {}
    counts = {"rows": 0, "graded": 0, "blank": 0}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"query_id", "candidate_id", "grade"} - set(reader.fieldnames or [])
    if missing:
        raise LookalikeError(f"{path}: no column(s) {sorted(missing)}; expected the columns of review.csv")
    for row in reader:
        counts["rows"] += 1
        raw = (row.get("grade") or "").strip()
        if not raw:
            counts["blank"] += 1
            continue
        if raw not in {"1", "2", "3", "4", "5"}:
            raise LookalikeError(f"{path}:{reader.line_num}: grade {raw!r} is not one of 1-5")
        q, d = (row.get("query_id") or "").strip(), (row.get("candidate_id") or "").strip()
        if not q or not d:
            raise LookalikeError(f"{path}:{reader.line_num}: empty query_id or candidate_id")
        grades.setdefault((q, d), []).append(int(raw))
        counts["graded"] += 1
    qrels: Qrels = {}
    for (q, d), gs in sorted(grades.items()):
        qrels.setdefault(q, {})[d] = int(np.floor(np.mean(gs) + 0.5))
    counts["pairs"] = len(grades)
    counts["pairs_with_several_reviewers"] = sum(len(g) > 1 for g in grades.values())
    return qrels, counts


def agreement(manual: Qrels, auto: Qrels, manual_threshold: int = 3, auto_threshold: int = 1) -> dict:
    """An automatic GT against the experts on the reviewed pairs: Cohen's κ, precision, recall (see above)."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [(q, d, g) for q, rel in manual.items() for d, g in rel.items()]
    expert = np.array([g >= manual_threshold for _, _, g in pairs])
    machine = np.array([auto.get(q, {}).get(d, 0) >= auto_threshold for q, d, _ in pairs])
    tp = int((expert & machine).sum())
    both_same = bool(len(pairs)) and (len(set(expert)) == 1 and set(expert) == set(machine))
    kappa = 1.0 if both_same else float(cohen_kappa_score(expert, machine)) if len(pairs) else float("nan")
    return {
        "pairs": len(pairs),
        "expert_relevant": int(expert.sum()),
        "gt_relevant": int(machine.sum()),
        "both_relevant": tp,
        "cohen_kappa": kappa,
        "precision": tp / int(machine.sum()) if machine.any() else float("nan"),
        "recall": tp / int(expert.sum()) if expert.any() else float("nan"),
        "raw_agreement": float((expert == machine).mean()) if len(pairs) else float("nan"),
    }
