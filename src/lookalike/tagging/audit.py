"""The catalogue audit: which stored labels disagree with a confident prediction, for a person to review.

Every product is judged by a tagger that never saw its label: the catalogue is cut into folds (by a hash of
the product id, so a product's fold never depends on the order of the file), and each fold's products are
tagged by heads refitted on the other folds (with the C and the combination the checkpoint's tagger chose)
and by a kNN vote over the other folds only. cleanlab's confident learning then finds the label issues from
these out-of-fold probabilities (per-class thresholds: a class the tagger is unsure of needs more evidence);
each is listed with the stored value, the predicted one and the confidences, most confident first.

`apply_review` writes a reviewed audit's corrections to a new table beside the source, never over it.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.tagging.tagger import (
    FieldTagger,
    Labelled,
    Tagger,
    fit_binary_probes,
    fit_softmax_probe,
    knn,
)

logger = logging.getLogger(__name__)

COLUMNS = ["id", "field", "stored", "predicted", "confidence", "stored_probability", "label_quality", "image"]
REVIEW_COLUMN = "corrected"
# A fold's probe starts from the whole catalogue's solution, a few steps from its own optimum.
AUDIT_ITERATIONS = 50


def folds_of(ids: list[str], k: int, seed: int = 0) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.sha1(f"{seed}:fold:{i}".encode()).digest()[:8], "big") % k for i in ids], np.int64
    )


def out_of_fold(tagger: Tagger, data: Labelled, folds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Calibrated probabilities of every product's every field from models that never saw its labels."""
    if folds < 2:
        raise LookalikeError(f"the audit needs at least 2 folds, got {folds}")
    fold = folds_of(data.ids, folds, seed)
    probs: dict[str, np.ndarray] = {
        name: np.zeros((len(data), len(f.classes)), np.float32) for name, f in tagger.fields.items()
    }
    for k in range(folds):
        tr, te = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        if len(te) == 0 or len(tr) == 0:
            continue
        train, test = data.take(tr), data.take(te)
        nb = knn(test.vectors, train.vectors, tagger.k)
        for name, f in tagger.fields.items():
            g = FieldTagger(
                f.name,
                f.multi,
                f.classes,
                {},
                f.value_vectors,
                f.weights,
                f.bias,
                f.temperatures,
                f.encode(train.attributes),
                f.knn_k,
                f.knn_tau,
            )
            for m, head in f.heads.items():
                x = train.vectors if m == "probe" else train.colour
                y = g.gallery_labels
                assert y is not None
                empty = x[:0]
                if f.multi:
                    g.heads[m] = fit_binary_probes(x, y, empty, y[:0], Cs=(head.C,))
                else:
                    g.heads[m] = fit_softmax_probe(
                        x, y, len(f.classes), empty, y[:0], (head.C,), init=head, max_iter=AUDIT_ITERATIONS
                    )
            probs[name][te] = g.combine(g.method_probs(test, nb))
        logger.info("audit: fold %d of %d done (%d products)", k + 1, folds, len(te))
    return probs


@dataclass
class Issue:
    id: str
    field: str
    stored: str
    predicted: str
    confidence: float
    stored_probability: float
    label_quality: float
    image: str


def find_issues(
    tagger: Tagger, data: Labelled, probs: dict[str, np.ndarray], images: list[str], min_confidence: float = 0.0
) -> list[Issue]:
    """cleanlab's label issues of each single-valued field (list fields are not audited: a missing value
    there is an omission, not a wrong label) whose predicted value has at least `min_confidence` (calibrated),
    most confident prediction first."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues: list[Issue] = []
    for name, P in probs.items():
        f = tagger.fields[name]
        if f.multi:
            continue
        y = f.encode(data.attributes)
        rows = np.nonzero(y >= 0)[0]
        if len(rows) == 0 or len(f.classes) < 2:
            continue
        labels, pp = y[rows], np.clip(P[rows], 1e-6, 1)
        pp = pp / pp.sum(1, keepdims=True)
        flagged = find_label_issues(labels, pp, filter_by="prune_by_noise_rate", n_jobs=1)
        quality = get_label_quality_scores(labels, pp, method="self_confidence")
        for j in np.nonzero(flagged)[0]:
            pred = int(pp[j].argmax())
            if pred == labels[j] or pp[j, pred] < min_confidence:
                continue  # the tagger agrees with the stored value, or is not sure enough to say otherwise
            i = rows[j]
            issues.append(
                Issue(
                    data.ids[i],
                    name,
                    f.classes[labels[j]],
                    f.classes[pred],
                    float(pp[j, pred]),
                    float(pp[j, labels[j]]),
                    float(quality[j]),
                    images[i],
                )
            )
    order = {name: k for k, name in enumerate(probs)}
    issues.sort(key=lambda s: (order[s.field], -s.confidence, s.id))
    return issues


def write_audit(issues: list[Issue], out: Path, sheet_rows: int = 2000) -> tuple[Path, Path]:
    """audit.csv (every issue, a `corrected` column for the reviewer) and audit.html (a contact sheet of the
    `sheet_rows` most confident issues of each field)."""
    out.mkdir(parents=True, exist_ok=True)
    table = out / "audit.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*COLUMNS, REVIEW_COLUMN])
        for s in issues:
            w.writerow(
                [s.id, s.field, s.stored, s.predicted, f"{s.confidence:.4f}", f"{s.stored_probability:.4f}",
                 f"{s.label_quality:.4f}", s.image, ""]
            )  # fmt: skip
    sheet = out / "audit.html"
    shown: dict[str, int] = {}
    cards = []
    for s in issues:
        shown[s.field] = shown.get(s.field, 0) + 1
        if shown[s.field] > sheet_rows:
            continue
        src = Path(s.image).resolve().as_uri() if s.image else ""
        cards.append(
            f'<figure><img loading="lazy" src="{html.escape(src)}" alt="{html.escape(s.id)}">'
            f"<figcaption><b>{html.escape(s.id)}</b> · {html.escape(s.field)}<br>"
            f"stored <s>{html.escape(s.stored)}</s> ({s.stored_probability:.2f})<br>"
            f"predicted <b>{html.escape(s.predicted)}</b> ({s.confidence:.2f})</figcaption></figure>"
        )
    counts = ", ".join(f"{k}: {v}" for k, v in shown.items())
    sheet.write_text(
        "<!doctype html><meta charset=utf-8><title>lookalike audit</title><style>"
        "body{font:13px sans-serif}figure{display:inline-block;width:150px;margin:4px;vertical-align:top}"
        "img{width:150px;height:200px;object-fit:contain;background:#eee}</style>"
        f"<h1>Suspected mislabels ({len(issues)})</h1><p>{html.escape(counts)}; most confident first. "
        f"Fill the <code>{REVIEW_COLUMN}</code> column of audit.csv, then "
        "<code>lookalike audit --apply audit.csv</code>.</p>" + "".join(cards),
        encoding="utf-8",
    )
    return table, sheet


def read_review(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise LookalikeError(f"reviewed audit not found: {path}") from None
    need = {"id", "field", "stored", REVIEW_COLUMN}
    if not rows or not need <= set(rows[0]):
        raise LookalikeError(f"{path}: expected an audit.csv with columns {sorted(need)}")
    return rows


def source_table(catalog: Path) -> Path:
    """The table file a catalogue path reads (as `load_catalogue` finds it)."""
    if catalog.is_file():
        return catalog
    tables = (
        [catalog / "styles.csv"]
        if (catalog / "styles.csv").exists()
        else sorted([*catalog.glob("*.csv"), *catalog.glob("*.jsonl")])
    )
    if len(tables) != 1:
        raise LookalikeError(f"{catalog}: --apply needs a table catalogue (one .csv or .jsonl); found {len(tables)}")
    return tables[0]


def apply_review(review: Path, catalog: Path, id_field: str, dest: Path | None = None) -> tuple[Path, int]:
    """A copy of the catalogue's table with the reviewer's corrections (rows whose `corrected` is filled),
    written beside the source as `<name>.corrected<ext>` (or `dest`), atomically; the source is never written.
    A correction whose id or field the table lacks, or whose stored value no longer matches, is an error
    naming its line, and nothing is written."""
    source = source_table(catalog)
    dest = dest or source.with_name(f"{source.stem}.corrected{source.suffix}")
    if dest.resolve() == source.resolve():
        raise LookalikeError(f"refusing to write corrections over the source {source}")
    changes: dict[str, dict[str, tuple[str, str, int]]] = {}
    for n, r in enumerate(read_review(review), 2):
        new = (r.get(REVIEW_COLUMN) or "").strip()
        if new:
            changes.setdefault(r["id"], {})[r["field"]] = (r["stored"], new, n)
    jsonl = source.suffix.lower() in (".jsonl", ".ndjson", ".json")
    if jsonl:
        records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        columns: list[str] = []
    else:
        with open(source, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            records = list(reader)
    done = 0
    seen: set[str] = set()
    for rec in records:
        pid = str(rec.get(id_field, ""))
        for fld, (stored, new, n) in changes.get(pid, {}).items():
            if fld not in rec:
                raise LookalikeError(f"{review}:{n}: the table {source} has no field {fld!r}")
            if str(rec[fld]) != stored:
                raise LookalikeError(
                    f"{review}:{n}: product {pid} field {fld!r} is {rec[fld]!r} in {source}, the audit saw {stored!r}"
                )
            rec[fld] = new
            done += 1
        seen.add(pid)
    missing = sorted(set(changes) - seen)
    if missing:
        raise LookalikeError(f"{review}: product ids not in {source}: {missing[:5]}")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            if jsonl:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            else:
                w = csv.DictWriter(f, columns)
                w.writeheader()
                w.writerows(records)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest, done


def suspected_ids(path: str | Path) -> set[str]:
    """The product ids an audit.csv flags (what `train.exclude_suspected_mislabels` leaves out of training)."""
    return {r["id"] for r in read_review(Path(path))}
