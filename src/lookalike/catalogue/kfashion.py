"""Load K-Fashion (AI Hub) label JSON: one product per labelled garment slot, cropped by its polygon.

A K-Fashion image shows a whole outfit; the slots (아우터/상의/하의/원피스) are the products a shopper
would search for, so each labelled slot becomes its own Product with a crop box inside the shared image.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lookalike.catalogue.schema import Catalogue, CatalogueSchema, ImageRef, LoadReport, Product
from lookalike.errors import LookalikeError

SLOTS = ("아우터", "상의", "하의", "원피스")
LIST_KEYS = ("소재", "프린트", "디테일")
STYLE_KEYS = ("스타일", "서브스타일")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
LABEL_DIR = "라벨링데이터"
SOURCE_DIR = "원천데이터"
_POLY_KEY = re.compile(r"^([XY])좌표(\d+)$")

Box = tuple[int, int, int, int]


class _Malformed(Exception):
    """The file is JSON we cannot read as a K-Fashion label; counted, never raised to the user."""


def load_kfashion(root: Path, min_box: int = 8) -> Catalogue:
    """Load every K-Fashion label under `root`: flat, `{style}/{id}.json`, or AI Hub 라벨링데이터/원천데이터.

    Bad files and unusable slots are skipped and counted in the report rather than aborting the load,
    because a real AI Hub download always has a few; only an empty result is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise LookalikeError(f"K-Fashion root {root} is not a directory")
    report = LoadReport(source=f"kfashion {root}")
    json_paths = sorted(root.rglob("*.json"))
    products: list[Product] = []
    seen_ids: set[str] = set()
    for path in json_paths:
        where = str(path.relative_to(root))
        try:
            image_id, image_names, details = _parse(path)
        except _Malformed:
            report.skip("malformed JSON", where)
            continue
        folder = path.parent.name if path.parent != root else ""
        for product in _file_products(path, image_id, image_names, details, min_box, report, where):
            if folder and LABEL_DIR not in folder and SOURCE_DIR not in folder:
                product.extra["style_folder"] = folder
            if product.id in seen_ids:
                report.skip("duplicate id", f"{where}:{product.id}")
                continue
            seen_ids.add(product.id)
            products.append(product)

    if not products:
        shown = ", ".join(str(p) for p in json_paths[:5]) + (", ..." if len(json_paths) > 5 else "")
        msg = f"no K-Fashion items loaded from {root}: searched {root}/**/*.json (found {len(json_paths)} files"
        msg += f": {shown})" if json_paths else ")"
        if report.skipped:
            msg += "; skipped: " + ", ".join(
                f"{n} × {reason} (e.g. {', '.join(report.examples[reason])})"
                for reason, n in report.skipped.most_common()
            )
        raise LookalikeError(msg)

    report.loaded = len(products)
    report.counts["style"] = Counter(s for p in products for s in (p.attributes["style"] or ["(none)"]))
    report.counts["category"] = Counter(str(p.attributes.get("카테고리", p.attributes["slot"])) for p in products)
    if any("style_folder" in p.extra for p in products):
        report.counts["style_folder"] = Counter(p.extra.get("style_folder", "(none)") for p in products)
    singles = {k for p in products for k, v in p.attributes.items() if not isinstance(v, list)} - {"slot"}
    schema = CatalogueSchema(
        id_field="id",
        single_fields=["slot", *sorted(singles)],
        list_fields=["style", *LIST_KEYS],
        text_field="text",
        category_field="slot",
    )
    return Catalogue(products, schema, root, report)


def _parse(path: Path) -> tuple[str, list[str], dict[str, Any]]:
    """(image id, candidate image file names, 데이터셋 상세설명) or _Malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        info = data["이미지 정보"]
        details = data["데이터셋 정보"]["데이터셋 상세설명"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise _Malformed(str(path)) from e
    if not isinstance(info, dict) or not isinstance(details, dict) or not isinstance(details.get("라벨링"), dict):
        raise _Malformed(str(path))
    image_id = str(info.get("이미지 식별자") or path.stem)
    names = [path.stem + ext for ext in IMAGE_EXTS]
    if isinstance(info.get("이미지 파일명"), str) and info["이미지 파일명"]:
        names.append(Path(info["이미지 파일명"]).name)
    return image_id, names, details


def _file_products(
    path: Path,
    image_id: str,
    image_names: list[str],
    details: dict[str, Any],
    min_box: int,
    report: LoadReport,
    where: str,
) -> list[Product]:
    """The products of one label file; every rejected slot is counted in `report` with its reason."""
    labels = details["라벨링"]
    rects = _dict(details.get("렉트좌표"))
    polys = _dict(details.get("폴리곤좌표"))
    styles = _styles(labels.get("스타일"))

    candidates: list[tuple[str, dict[str, Any], tuple[float, float, float, float]]] = []
    for slot in SLOTS:
        attrs = _attributes(_first(labels.get(slot)))
        box = _poly_box(_first(polys.get(slot))) or _rect_box(_first(rects.get(slot)))
        if not attrs and box is None:
            continue  # `[{}]`: the slot is simply not worn in this image
        if box is None:
            report.skip("slot without box", f"{where}:{slot}")
        elif not attrs:
            report.skip("empty attributes", f"{where}:{slot}")
        else:
            candidates.append((slot, attrs, box))
    if not candidates:
        return []

    image_path = _find_image(path, image_names)
    size: tuple[int, int] | None = None
    reason = "missing image"
    if image_path is not None:
        try:
            with Image.open(image_path) as im:
                size = im.size
        except (UnidentifiedImageError, OSError, ValueError):
            reason = "corrupt image"
    if image_path is None or size is None:
        for slot, _, _ in candidates:
            report.skip(reason, f"{where}:{slot}")
        return []

    products = []
    for slot, attrs, raw_box in candidates:
        box = _clip(raw_box, size)
        if box[2] - box[0] < min_box or box[3] - box[1] < min_box:
            report.skip("box too small", f"{where}:{slot}")
            continue
        attributes = {"slot": slot, "style": styles, **attrs}
        products.append(
            Product(
                id=f"{image_id}_{slot}",
                image=ImageRef(image_path, box),
                attributes=attributes,
                text=_text(slot, styles, attrs),
            )
        )
    return products


def _first(value: Any) -> dict[str, Any]:
    """K-Fashion wraps each slot's dict in a one-element list; an absent or empty slot becomes {}."""
    if isinstance(value, list):
        value = value[0] if value else {}
    return value if isinstance(value, dict) else {}


def _styles(value: Any) -> list[str]:
    """스타일 and 서브스타일 of the image, in label order, without repeats."""
    entries = value if isinstance(value, list) else [value]
    out: list[str] = []
    for entry in entries:
        vals = [entry.get(k) for k in STYLE_KEYS] if isinstance(entry, dict) else [entry]
        out += [v for v in vals if isinstance(v, str) and v and v not in out]
    return out


def _attributes(label: dict[str, Any]) -> dict[str, str | list[str]]:
    """Slot label → attributes: 소재/프린트/디테일 as lists, the rest one string; empty values dropped."""
    attrs: dict[str, str | list[str]] = {}
    for key, value in label.items():
        items = [str(v) for v in (value if isinstance(value, list) else [value]) if v not in (None, "")]
        if not items:
            continue
        attrs[key] = items if key in LIST_KEYS else ",".join(items)
    return attrs


def _poly_box(poly: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """Bounding box of the polygon's X좌표k/Y좌표k points, or None without both coordinates."""
    xs: list[float] = []
    ys: list[float] = []
    for key, value in poly.items():
        m = _POLY_KEY.match(key)
        if m and isinstance(value, (int, float)) and not isinstance(value, bool):
            (xs if m.group(1) == "X" else ys).append(float(value))
    return (min(xs), min(ys), max(xs), max(ys)) if xs and ys else None


def _dict(value: Any) -> dict[str, Any]:
    """A JSON object as itself, anything else (missing, a list, a string) as empty."""
    return value if isinstance(value, dict) else {}


def _rect_box(rect: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """(X, Y, X+가로, Y+세로), or None when any of the four numbers is missing."""
    vals = [rect.get(k) for k in ("X좌표", "Y좌표", "가로", "세로")]
    nums = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) < len(vals):
        return None
    x, y, w, h = nums
    return (x, y, x + w, y + h)


def _clip(box: tuple[float, float, float, float], size: tuple[int, int]) -> Box:
    """Round to pixels and keep inside the image: annotators' points often stray past the border."""
    w, h = size
    x0, y0, x1, y1 = (round(v) for v in box)
    return (min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h))


def _find_image(label_path: Path, names: list[str]) -> Path | None:
    """The image beside the label, else in the matching folder of the sibling 원천데이터 tree."""
    dirs = [label_path.parent]
    for ancestor in label_path.parents:
        if LABEL_DIR in ancestor.name:
            rel = label_path.parent.relative_to(ancestor)
            dirs += sorted(d / rel for d in ancestor.parent.iterdir() if d.is_dir() and SOURCE_DIR in d.name)
            break
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    return None


def _text(slot: str, styles: list[str], attrs: dict[str, str | list[str]]) -> str:
    """A short Korean phrase (style, colour, category, then the rest) for the text tower to read."""
    first = [attrs.get("색상"), attrs.get("카테고리") or slot]
    rest = [v for k, v in attrs.items() if k not in ("색상", "카테고리")]
    words: list[str] = []
    for value in [*styles, *first, *rest]:
        for w in value if isinstance(value, list) else [value]:
            if w and w not in words:
                words.append(w)
    return " ".join(words)


def style_group(product: Product) -> str:
    """The style a K-Fashion product is reported under, as the original reports compare 로맨틱 / 리조트 / 레트로:
    its 스타일 label (the first, the main style), else the style folder it was filed in, else "(none)"."""
    styles = product.attributes.get("style")
    if isinstance(styles, list) and styles:
        return styles[0]
    return product.extra.get("style_folder") or "(none)"
