"""Expert review on a slice of the real KMWP bank: the pack (HTML form + CSV), stratified sampling, verdicts
back as graded qrels, and agreement: an 'expert' who grades by the label agrees perfectly with the label GT."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
from test_itembank_api import _bank

from lookalike.cli import main
from lookalike.itembank.groundtruth import read_qrels
from lookalike.itembank.review import agreement


def _run(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["itembank", "review", *args])
    return out.getvalue()


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    bank = _bank(tmp / "bank.csv")
    out = tmp / "pack"
    _run(["export", "--data", str(bank), "--sample", "6", "--stratify", "label", "--pool", "2", "--out", str(out)])
    with open(out / "review.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    labels = {}
    with open(bank, newline="", encoding="utf-8") as f:
        for n, r in enumerate(csv.DictReader(f), 1):
            labels[f"row-{n}"] = r["class"]
    return {"tmp": tmp, "bank": bank, "out": out, "rows": rows, "labels": labels}


def test_export_writes_a_form_and_a_csv_of_stratified_questions(pack):
    rows, labels, out = pack["rows"], pack["labels"], pack["out"]
    meta = json.loads((out / "review.json").read_text())
    queries = meta["query_ids"]
    assert len(queries) == 6 == meta["queries"] and meta["pairs"] == len(rows) >= 6
    assert len({labels[q] for q in queries}) == min(6, len(set(labels.values())))  # in turn from each label
    assert all(r["query_id"] != r["candidate_id"] and r["grade"] == "" for r in rows)
    page = (out / "review.html").read_text(encoding="utf-8")
    assert page.count('class="q"') == 6 and page.count('type="radio"') == 5 * len(rows)
    assert all(f'name="{r["pair_id"]}"' in page for r in rows)


def test_import_grades_and_agreement(pack, tmp_path):
    rows, labels = pack["rows"], pack["labels"]
    filled = tmp_path / "filled.csv"
    with open(filled, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        for n, r in enumerate(rows):  # the 'expert' grades by the label; the last row left blank
            same = labels[r["query_id"]] == labels[r["candidate_id"]]
            w.writerow({**r, "grade": "" if n == len(rows) - 1 else ("5" if same else "1"), "reviewer": "t"})
    printed = _run(["import", str(filled), "--data", str(pack["bank"]), "--out", str(tmp_path / "gt")])
    manual = read_qrels(tmp_path / "gt" / "qrels" / "manual.qrels")
    assert sum(map(len, manual.values())) == len(rows) - 1 and {g for r in manual.values() for g in r.values()} <= {
        1,
        5,
    }
    report = json.loads((tmp_path / "gt" / "qrels" / "manual.json").read_text())
    assert report["verdicts"]["blank"] == 1
    lab = report["agreement"]["label"]
    assert lab["cohen_kappa"] == 1.0 and lab["precision"] == 1.0 and lab["recall"] == 1.0
    assert -1 <= report["agreement"]["tfidf"]["cohen_kappa"] <= 1
    assert "label    vs experts on" in printed and "Cohen's κ 1.000" in printed


def test_bad_verdicts_are_named(pack, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    r = pack["rows"][0]
    bad.write_text(f"query_id,candidate_id,grade\n{r['query_id']},{r['candidate_id']},7\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["itembank", "review", "import", str(bad), "--data", str(pack["bank"]), "--out", str(tmp_path)])
    assert "bad.csv:2: grade '7' is not one of 1-5" in capsys.readouterr().err


def test_agreement_counts():
    manual = {"q": {"a": 5, "b": 4, "c": 1, "d": 2}}
    auto = {"q": {"a": 1, "c": 1}}
    a = agreement(manual, auto)
    assert (a["pairs"], a["expert_relevant"], a["gt_relevant"], a["both_relevant"]) == (4, 2, 2, 1)
    assert a["precision"] == 0.5 and a["recall"] == 0.5 and a["cohen_kappa"] == pytest.approx(0.0)


@pytest.mark.slow  # a real Chromium
def test_the_form_saves_a_csv_that_imports(pack, tmp_path):
    """A reviewer in a real browser: grades every pair in review.html, saves, and `review import` reads it."""
    import shutil

    from playwright.sync_api import sync_playwright
    from test_dashboard_browser import CHROMIUM_ARGS

    rows, labels = pack["rows"], pack["labels"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto((pack["out"] / "review.html").as_uri())
        page.fill("#reviewer", "expert-1")
        for r in rows:
            same = labels[r["query_id"]] == labels[r["candidate_id"]]
            page.check(f'input[name="{r["pair_id"]}"][value="{4 if same else 2}"]')
        page.fill(f'[name="note-{rows[0]["pair_id"]}"]', 'a "quoted", note')
        with page.expect_download() as d:
            page.click("text=Save verdicts (CSV)")
        d.value.save_as(tmp_path / "saved.csv")
        browser.close()
    with open(tmp_path / "saved.csv", newline="", encoding="utf-8-sig") as f:
        saved = list(csv.DictReader(f))
    assert [s["pair_id"] for s in saved] == [r["pair_id"] for r in rows]
    assert saved[0]["note"] == 'a "quoted", note' and {s["reviewer"] for s in saved} == {"expert-1"}
    assert saved[0]["query_text"] == rows[0]["query_text"]  # the texts survive the round trip (quotes, commas)
    _run(["import", str(tmp_path / "saved.csv"), "--data", str(pack["bank"]), "--out", str(tmp_path / "gt")])
    report = json.loads((tmp_path / "gt" / "qrels" / "manual.json").read_text())
    assert report["verdicts"]["pairs"] == len(rows) and report["agreement"]["label"]["cohen_kappa"] == 1.0
