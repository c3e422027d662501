import json
import shutil

import pytest

from lookalike.catalogue import CatalogueSchema, load_catalogue
from lookalike.catalogue.split import split_ids, subsample
from lookalike.errors import LookalikeError


@pytest.fixture(scope="module")
def full(fashion_dir):
    return load_catalogue(fashion_dir)


def test_fashion_products_preset_loads_the_real_catalogue(full):
    cat = full
    assert len(cat) == 39653
    assert sum(cat.report.skipped.values()) == 0
    p = cat.products[0]
    assert p.image.path.exists() and p.image.path.name == f"{p.id}.jpg"
    assert set(p.attributes) == {
        "gender",
        "masterCategory",
        "subCategory",
        "articleType",
        "baseColour",
        "season",
        "usage",
    }
    assert p.text  # productDisplayName feeds the text tower


def _table_fixture(tmp_path, fashion_dir):
    img = tmp_path / "img"
    img.mkdir()
    for i in ("1163", "1164", "1165"):
        shutil.copy(fashion_dir / "images" / f"{i}.jpg", img / f"{i}.jpg")
    (img / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    return img


def test_csv_table_skips_bad_rows_and_counts_them(tmp_path, fashion_dir):
    _table_fixture(tmp_path, fashion_dir)
    (tmp_path / "cat.csv").write_text(
        "sku,path,colour,tags,title\n"
        "a,img/1163.jpg,red,cotton|summer,Red tee\n"
        "b,img/1164.jpg,blue,,Blue tee\n"
        "c,img/missing.jpg,red,x,Gone\n"
        "d,img/1165.jpg,,,\n"
        "a,img/1165.jpg,red,x,Duplicate\n"
        "e,img/1165.jpg,red,x,too,many,columns\n"
        ",img/1165.jpg,red,x,No id\n"
    )
    schema = CatalogueSchema(
        id_field="sku", image_field="path", single_fields=["colour"], list_fields=["tags"], text_field="title"
    )
    cat = load_catalogue(tmp_path / "cat.csv", schema)
    assert [p.id for p in cat.products] == ["a", "b"]
    assert cat.products[0].attributes == {"colour": "red", "tags": ["cotton", "summer"]}
    assert cat.products[1].attributes == {"colour": "blue"}
    assert cat.report.skipped == {
        "missing image": 1,
        "empty attributes": 1,
        "duplicate id": 1,
        "wrong number of columns": 1,
        "missing sku": 1,
    }
    assert "missing image" in cat.report.summary()


def test_jsonl_table_with_sidecar_schema_and_malformed_lines(tmp_path, fashion_dir):
    _table_fixture(tmp_path, fashion_dir)
    rows = [
        json.dumps({"id": "a", "image": "img/1163.jpg", "colour": "red", "tags": ["x", "y"]}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": "b", "image": "img/1164.jpg", "colour": "blue", "tags": []}),
    ]
    (tmp_path / "cat.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "lookalike-schema.json").write_text(
        json.dumps({"image_field": "image", "single_fields": ["colour"], "list_fields": ["tags"]})
    )
    cat = load_catalogue(tmp_path / "cat.jsonl")
    assert [p.id for p in cat.products] == ["a", "b"]
    assert cat.products[0].attributes["tags"] == ["x", "y"]
    assert cat.report.skipped["malformed JSON"] == 2


def test_undecodable_bytes_skip_their_record_and_leave_the_rest_intact(tmp_path, fashion_dir):
    """A row holding bytes that are not UTF-8 (here Latin-1 é) is skipped and counted, naming its line; the
    rows around it, UTF-8 text beyond ASCII included, load exactly as written."""
    lines = (fashion_dir / "styles.csv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [r for r in lines[1:] if (fashion_dir / "images" / f"{r.split(',')[0]}.jpg").exists()][:4]
    cat = tmp_path / "fashion"
    cat.mkdir()
    (cat / "images").symlink_to(fashion_dir / "images")
    good = rows[0] + " Café"  # productDisplayName (the text field) with a valid two-byte character
    bad = rows[1].encode("utf-8") + b" Caf\xe9"  # the same in Latin-1: one byte that UTF-8 cannot decode
    (cat / "styles.csv").write_bytes(
        b"\n".join([header.encode(), good.encode("utf-8"), bad, *(r.encode() for r in rows[2:])]) + b"\n"
    )
    loaded = load_catalogue(cat)
    assert [p.id for p in loaded.products] == [rows[0].split(",")[0], *(r.split(",")[0] for r in rows[2:])]
    assert loaded.products[0].text.endswith(" Café")
    assert loaded.report.skipped == {"non-UTF-8 text": 1}
    assert loaded.report.examples["non-UTF-8 text"] == ["styles.csv:3"]

    table = tmp_path / "cat.jsonl"
    _table_fixture(tmp_path, fashion_dir)
    (tmp_path / "lookalike-schema.json").write_text(json.dumps({"image_field": "image", "single_fields": ["colour"]}))
    table.write_bytes(
        b"\n".join(
            [
                json.dumps({"id": "a", "image": "img/1163.jpg", "colour": "crème"}, ensure_ascii=False).encode(),
                b'{"id": "b", "image": "img/1164.jpg", "colour": "cr\xe8me"}',
                json.dumps({"id": "c", "image": "img/1165.jpg", "colour": "rouge"}).encode(),
            ]
        )
        + b"\n"
    )
    loaded = load_catalogue(table)
    assert [(p.id, p.attributes["colour"]) for p in loaded.products] == [("a", "crème"), ("c", "rouge")]
    assert loaded.report.skipped == {"non-UTF-8 text": 1}
    assert loaded.report.examples["non-UTF-8 text"] == ["cat.jsonl:2"]


def test_table_without_schema_and_nothing_loaded_name_the_problem(tmp_path):
    (tmp_path / "cat.csv").write_text("id,path,colour\n1,nope.jpg,red\n")
    with pytest.raises(LookalikeError, match="no schema given"):
        load_catalogue(tmp_path / "cat.csv")
    schema = CatalogueSchema(image_field="path", single_fields=["colour"])
    with pytest.raises(LookalikeError, match=r"no products loaded from .*cat.csv"):
        load_catalogue(tmp_path / "cat.csv", schema)
    with pytest.raises(LookalikeError, match="does not exist"):
        load_catalogue(tmp_path / "absent")


def test_schema_validation():
    with pytest.raises(ValueError, match="both single and list"):
        CatalogueSchema(image_field="p", single_fields=["a"], list_fields=["a"])
    with pytest.raises(ValueError, match="category_field"):
        CatalogueSchema(image_field="p", single_fields=["a"], category_field="b")


def test_split_is_deterministic_disjoint_and_stratified(full):
    cat = full
    a = split_ids(cat, 0.15, 0.15, seed=7)
    b = split_ids(cat.subset(list(reversed([p.id for p in cat.products]))), 0.15, 0.15, seed=7)
    assert a == b  # independent of reading order
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == len(cat) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert abs(len(a["test"]) / len(cat) - 0.15) < 0.01
    by_id = {p.id: p.value("subCategory") for p in cat.products}
    test_cats = {by_id[i] for i in a["test"]}
    big = {c for c, n in cat.report.counts["category"].items() if n >= 3}
    assert big <= test_cats  # every category with 3+ products is in the test split
    assert split_ids(cat, 0.15, 0.15, seed=8) != a


def test_subsample_is_reproducible(synthetic):
    s1 = subsample(synthetic, 50, seed=1)
    s2 = subsample(synthetic, 50, seed=1)
    assert [p.id for p in s1.products] == [p.id for p in s2.products] and len(s1) == 50


def test_synthetic_catalogue_images_depend_on_attributes(synthetic):
    import numpy as np
    from PIL import Image

    reds = [p for p in synthetic.products if p.attributes["colour"] == "red" and p.attributes["category"] == "coat"]
    blues = [p for p in synthetic.products if p.attributes["colour"] == "blue" and p.attributes["category"] == "coat"]
    r = np.median(np.asarray(Image.open(reds[0].image.path))[20:50, 20:44].reshape(-1, 3), axis=0)
    b = np.median(np.asarray(Image.open(blues[0].image.path))[20:50, 20:44].reshape(-1, 3), axis=0)
    assert r[0] > r[2] and b[2] > b[0]
