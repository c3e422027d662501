"""K-Fashion loader on the real AI Hub samples, copied into each layout we claim to read."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED

from lookalike.catalogue.kfashion import load_kfashion
from lookalike.errors import LookalikeError

SAMPLES = SHARED / "kfashion-samples"  # ../shared/data/kfashion-samples from the repository root
IDS = ("100026", "1070263", "1092253")


@pytest.fixture(scope="module", autouse=True)
def samples_present() -> None:
    """The samples ship with the project's data: their absence is a failure that names the path, never a skip."""
    missing = [f"{i}.{ext}" for i in IDS for ext in ("json", "jpg") if not (SAMPLES / f"{i}.{ext}").is_file()]
    assert not missing, f"K-Fashion samples missing from {SAMPLES}: {missing}"


def _copy(image_id: str, label_dir: Path, image_dir: Path | None = None, image_name: str | None = None) -> Path:
    """Copy one sample's JSON into label_dir and its JPG into image_dir (default: beside it); return the JSON."""
    label_dir.mkdir(parents=True, exist_ok=True)
    image_dir = image_dir or label_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLES / f"{image_id}.json", label_dir / f"{image_id}.json")
    shutil.copyfile(SAMPLES / f"{image_id}.jpg", image_dir / (image_name or f"{image_id}.jpg"))
    return label_dir / f"{image_id}.json"


def _edit(path: Path, change) -> dict:
    """Apply `change` to the 데이터셋 상세설명 of a copied label file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data["데이터셋 정보"]["데이터셋 상세설명"])
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return data


def _poly_box(image_id: str, slot: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Expected box straight from the sample's polygon: min/max, rounded, clipped."""
    poly = json.loads((SAMPLES / f"{image_id}.json").read_text(encoding="utf-8"))["데이터셋 정보"]["데이터셋 상세설명"][
        "폴리곤좌표"
    ][slot][0]
    xs = [v for k, v in poly.items() if k.startswith("X")]
    ys = [v for k, v in poly.items() if k.startswith("Y")]
    w, h = size
    return (max(0, round(min(xs))), max(0, round(min(ys))), min(w, round(max(xs))), min(h, round(max(ys))))


def test_flat_samples_load_one_product_per_labelled_slot(tmp_path: Path) -> None:
    for i in IDS:
        _copy(i, tmp_path)
    cat = load_kfashion(tmp_path)
    by_id = {p.id: p for p in cat.products}

    assert sorted(by_id) == sorted(f"{i}_{s}" for i in IDS for s in ("상의", "하의"))
    assert Counter(p.attributes["slot"] for p in cat.products) == {"상의": 3, "하의": 3}
    assert cat.report.loaded == 6 and not cat.report.skipped

    top = by_id["100026_상의"]
    assert top.image.path == tmp_path / "100026.jpg"
    assert top.image.box == _poly_box("100026", "상의", (800, 800)) == (261, 60, 556, 395)
    assert top.image.box != (260, 59, 555, 394)  # the rect would give this; the polygon wins
    assert all(isinstance(v, int) for v in top.image.box)
    assert by_id["1070263_하의"].image.box == _poly_box("1070263", "하의", (800, 1049))
    assert top.attributes["style"] == ["로맨틱"]
    assert top.attributes["소재"] == ["우븐", "레이스"] and top.attributes["프린트"] == ["도트"]
    assert top.attributes["카테고리"] == "블라우스" and top.attributes["핏"] == "루즈"
    assert by_id["1070263_상의"].attributes == {"slot": "상의", "style": [], "색상": "화이트", "소매기장": "7부소매"}
    assert top.text.startswith("로맨틱 화이트 블라우스") and "루즈" in top.text
    assert "상의" in by_id["1092253_상의"].text and "그레이" in by_id["1092253_상의"].text

    assert cat.schema.single_fields[0] == "slot" and cat.schema.single_fields[1:] == sorted(
        cat.schema.single_fields[1:]
    )
    assert {"카테고리", "색상", "소매기장"} <= set(cat.schema.single_fields)
    assert cat.schema.list_fields == ["style", "소재", "프린트", "디테일"] and cat.schema.category_field == "slot"
    assert cat.report.counts["style"] == {"로맨틱": 2, "(none)": 4}
    assert cat.report.counts["category"] == {"블라우스": 1, "스커트": 1, "상의": 2, "하의": 2}


def test_style_folder_layout(tmp_path: Path) -> None:
    _copy("100026", tmp_path / "로맨틱")
    _copy("1070263", tmp_path / "기타")
    cat = load_kfashion(tmp_path)
    paths = {p.id: p.image.path for p in cat.products}
    assert paths == {
        "100026_상의": tmp_path / "로맨틱/100026.jpg",
        "100026_하의": tmp_path / "로맨틱/100026.jpg",
        "1070263_상의": tmp_path / "기타/1070263.jpg",
        "1070263_하의": tmp_path / "기타/1070263.jpg",
    }


@pytest.mark.parametrize("from_labels_dir", [False, True])
def test_aihub_sibling_tree(tmp_path: Path, from_labels_dir: bool) -> None:
    base = tmp_path / "Training"
    _copy("100026", base / "라벨링데이터/로맨틱", base / "원천데이터/로맨틱")
    # second image found only through its "이미지 파일명", in the sibling tree
    _copy("1070263", base / "라벨링데이터/기타", base / "원천데이터/기타", image_name="nt2157k07-nt2157k07-s_3.jpg")
    cat = load_kfashion(base / "라벨링데이터" if from_labels_dir else base)
    paths = {p.id: p.image.path for p in cat.products}
    assert paths["100026_상의"] == base / "원천데이터/로맨틱/100026.jpg"
    assert paths["1070263_하의"] == base / "원천데이터/기타/nt2157k07-nt2157k07-s_3.jpg"
    assert len(cat) == 4 and not cat.report.skipped


def test_rect_used_when_slot_has_no_polygon(tmp_path: Path) -> None:
    path = _copy("100026", tmp_path)
    _edit(path, lambda d: d["폴리곤좌표"].update({"상의": [{}]}))
    boxes = {p.id: p.image.box for p in load_kfashion(tmp_path).products}
    assert boxes["100026_상의"] == (260, 59, 555, 394)  # round(260.144), round(59.42), +295, +335
    assert boxes["100026_하의"] == _poly_box("100026", "하의", (800, 800))


def test_slot_problems_are_counted_by_reason(tmp_path: Path) -> None:
    path = _copy("100026", tmp_path)

    def change(d: dict) -> None:
        d["라벨링"]["아우터"] = [{"색상": "블랙", "카테고리": "코트"}]  # attributes, no box anywhere
        d["렉트좌표"]["원피스"] = [{"X좌표": 10, "Y좌표": 10, "가로": 100, "세로": 100}]  # box, no attributes
        d["폴리곤좌표"]["상의"] = [{"X좌표1": 100, "Y좌표1": 100, "X좌표2": 104, "Y좌표2": 150}]  # 4 px wide
        d["폴리곤좌표"]["하의"][0]["X좌표1"] = 5000.0  # strays past the 800 px border
        d["폴리곤좌표"]["하의"][0]["Y좌표1"] = -30.0

    _edit(path, change)
    cat = load_kfashion(tmp_path)
    assert [p.id for p in cat.products] == ["100026_하의"]
    assert cat.products[0].image.box == (326, 0, 800, 619)
    assert cat.report.skipped == {"slot without box": 1, "empty attributes": 1, "box too small": 1}
    assert cat.report.examples["slot without box"] == ["100026.json:아우터"]
    assert len(load_kfashion(tmp_path, min_box=4)) == 2


def test_bad_files_are_skipped_and_good_ones_still_load(tmp_path: Path) -> None:
    _copy("100026", tmp_path)
    (tmp_path / "broken.json").write_text('{"이미지 정보": {', encoding="utf-8")
    (tmp_path / "other.json").write_text('{"images": []}', encoding="utf-8")
    (tmp_path / "1070263.json").write_bytes((SAMPLES / "1070263.json").read_bytes())  # no image anywhere
    _copy("1092253", tmp_path)
    (tmp_path / "1092253.jpg").write_bytes(b"this is not a jpeg" * 10)

    cat = load_kfashion(tmp_path)
    assert sorted(p.id for p in cat.products) == ["100026_상의", "100026_하의"]
    assert cat.report.loaded == 2
    assert cat.report.skipped == {"malformed JSON": 2, "missing image": 2, "corrupt image": 2}
    assert cat.report.examples["corrupt image"] == ["1092253.json:상의", "1092253.json:하의"]
    assert sorted(cat.report.examples["malformed JSON"]) == ["broken.json", "other.json"]


def test_nothing_loaded_raises_naming_the_root(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LookalikeError, match="no K-Fashion items") as info:
        load_kfashion(empty)
    assert str(empty) in str(info.value) and "*.json" in str(info.value) and "found 0 files" in str(info.value)

    (empty / "bad.json").write_text("not json", encoding="utf-8")
    with pytest.raises(LookalikeError) as info:
        load_kfashion(empty)
    assert "bad.json" in str(info.value) and "malformed JSON" in str(info.value)

    with pytest.raises(LookalikeError, match="not a directory"):
        load_kfashion(tmp_path / "nope")


def test_same_image_in_two_folders_loads_once(tmp_path: Path) -> None:
    _copy("100026", tmp_path / "로맨틱")
    _copy("100026", tmp_path / "페미닌")
    cat = load_kfashion(tmp_path)
    assert sorted(p.id for p in cat.products) == ["100026_상의", "100026_하의"]
    assert all(p.image.path.parent.name == "로맨틱" for p in cat.products)  # sorted: the first folder wins
    assert cat.report.skipped == {"duplicate id": 2}
