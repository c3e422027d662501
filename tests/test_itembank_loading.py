"""Item-bank loader on the real KMWP corpus and on small made-up files with every kind of bad record."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED

from lookalike.errors import LookalikeError
from lookalike.itembank.loading import PRESETS, ItemBankSchema, load_item_bank

KMWP = SHARED / "kmwp" / "train.csv"


def test_kmwp_loads_with_row_ids_and_class_labels():
    bank = load_item_bank(KMWP, PRESETS["kmwp"])
    assert len(bank) == 2538 and not bank.report.skipped
    assert bank.ids[0] == "row-1" and bank.ids[-1] == "row-2538"
    assert bank.items[0].labels == ("8",) and "정팔각형" in bank.items[0].text
    assert sum(bank.report.counts["label"].values()) == 2538
    assert bank.report.counts["note"]["items whose text repeats an earlier item"] == 5


def test_bad_csv_records_are_skipped_and_counted(tmp_path):
    (tmp_path / "fig1.png").write_bytes(b"png")
    rows = [
        b"id,text,figure,label",
        b"a,\xec\x82\xac\xea\xb3\xbc 3\xea\xb0\x9c,fig1.png,x",  # 사과 3개 + an existing figure
        b"b,,,x",  # empty text
        b"c,\xff\xfe broken,,y",  # not UTF-8
        b"a,duplicate id,,y",
        b"d,needs a figure,missing.png,y",
        b"e,two labels,,x|y",
        b"f,too,many,columns,here",
    ]
    path = tmp_path / "bank.csv"
    path.write_bytes(b"\n".join(rows) + b"\n")
    bank = load_item_bank(path, ItemBankSchema(image_field="figure", label_field="label"))
    assert bank.ids == ["a", "e"]
    assert bank.items[0].text == "사과 3개" and bank.items[0].images == [tmp_path / "fig1.png"]
    assert bank.items[1].labels == ("x", "y")
    assert dict(bank.report.skipped) == {
        "empty text": 1,
        "non-UTF-8 text": 1,
        "duplicate id": 1,
        "missing image": 1,
        "wrong number of columns": 1,
    }
    assert "missing.png" in bank.report.examples["missing image"][0]


def test_jsonl_with_image_lists(tmp_path):
    (tmp_path / "f.png").write_bytes(b"png")
    lines = [
        json.dumps({"id": 1, "text": "넓이를 구하시오", "images": ["f.png"], "label": ["geo"]}, ensure_ascii=False),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": 2, "text": "   "}),
    ]
    path = tmp_path / "bank.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bank = load_item_bank(path, ItemBankSchema(image_field="images", label_field="label"))
    assert bank.ids == ["1"] and bank.items[0].labels == ("geo",)
    assert dict(bank.report.skipped) == {"malformed JSON": 2, "empty text": 1}


def test_clear_errors(tmp_path):
    with pytest.raises(LookalikeError, match="not found"):
        load_item_bank(tmp_path / "nope.csv")
    with pytest.raises(LookalikeError, match=r"no column 'question'.*'problem'"):
        load_item_bank(KMWP, ItemBankSchema(text_field="question", id_field=None))
    (tmp_path / "empty.csv").write_text("id,text\n1,\n", encoding="utf-8")
    with pytest.raises(LookalikeError, match=r"(?s)no items loaded.*empty text"):
        load_item_bank(tmp_path / "empty.csv")
