"""Generic catalogues: a CSV or JSON Lines table with an image column (or path template) and attributes.

Files are decoded with `surrogateescape`: a byte that is not UTF-8 survives as a lone surrogate, so its
record is skipped and counted ("non-UTF-8 text", naming the line) instead of being silently mangled, and one
bad byte costs one record, not the whole file.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from lookalike.catalogue.schema import Catalogue, CatalogueSchema, ImageRef, LoadReport, Product
from lookalike.errors import LookalikeError


def is_utf8(s: str) -> bool:
    """False for text read with errors="surrogateescape" that held bytes which are not UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates = undecodable bytes kept by surrogateescape
        return False
    return True


def _rows(path: Path, report: LoadReport) -> Iterator[tuple[str, dict]]:
    """(location, raw row) pairs; rows that cannot be parsed or decoded are counted, never raised."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not is_utf8(line):
                    report.skip("non-UTF-8 text", f"{path.name}:{n}")
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    report.skip("malformed JSON", f"{path.name}:{n}")
                    continue
                if not isinstance(row, dict):
                    report.skip("malformed JSON", f"{path.name}:{n}")
                    continue
                yield f"{path.name}:{n}", row
    else:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f, restkey="__extra__")
            for row in reader:
                where = f"{path.name}:{reader.line_num}"  # the record's last line (quoted newlines span lines)
                if "__extra__" in row or None in row.values():
                    report.skip("wrong number of columns", where)
                    continue
                if not is_utf8("".join(row.values())):
                    report.skip("non-UTF-8 text", where)
                    continue
                yield where, row


def _values(raw, is_list: bool, sep: str) -> str | list[str] | None:
    if raw is None:
        return None
    if is_list:
        items = raw if isinstance(raw, list) else str(raw).split(sep)
        items = [str(v).strip() for v in items if str(v).strip()]
        return items or None
    value = str(raw).strip()
    return value or None


def load_table(path: Path, schema: CatalogueSchema, image_root: Path | None = None) -> Catalogue:
    path = Path(path)
    if not path.is_file():
        raise LookalikeError(f"catalogue file not found: {path}")
    if not schema.image_field and not schema.image_template:
        raise LookalikeError("schema needs image_field or image_template to find each product's image")
    template = schema.image_template or ""  # used only without image_field, and then set (checked above)
    root = Path(image_root or path.parent).resolve()
    root_str = str(root)
    report = LoadReport(source=str(path))
    products: list[Product] = []
    seen: set[str] = set()
    fields = [(name, name in schema.list_fields) for name in schema.fields]  # hoisted: this loop runs 40k times
    sep = schema.list_separator
    for where, row in _rows(path, report):
        pid = str(row.get(schema.id_field, "") or "").strip()
        if not pid:
            report.skip(f"missing {schema.id_field}", where)
            continue
        if pid in seen:
            report.skip("duplicate id", f"{where} ({pid})")
            continue
        attrs = {}
        for name, is_list in fields:
            v = _values(row.get(name), is_list, sep)
            if v is not None:
                attrs[name] = v
        if not attrs:
            report.skip("empty attributes", f"{where} ({pid})")
            continue
        try:
            rel = row[schema.image_field] if schema.image_field else template.format(**row)
        except KeyError as e:
            report.skip(f"missing image field {e}", where)
            continue
        image = os.path.join(root_str, str(rel))  # plain strings: no Path.resolve() (a filesystem walk) per row
        if not os.path.isfile(image):
            report.skip("missing image", f"{where} ({rel})")
            continue
        sales = None
        if schema.sales_field and str(row.get(schema.sales_field, "")).strip():
            try:
                sales = float(row[schema.sales_field])
            except ValueError:
                report.skip(f"non-numeric {schema.sales_field}", where)
                continue
        text = str(row.get(schema.text_field, "") or "").strip() if schema.text_field else ""
        extra = {k: str(v) for k, v in row.items() if k not in attrs and isinstance(v, (str, int, float))}
        products.append(Product(pid, ImageRef(Path(image)), attrs, text, sales, extra))
        seen.add(pid)
    report.loaded = len(products)
    if schema.category_field:
        report.counts["category"] = Counter(p.value(schema.category_field) for p in products)
    if not products:
        raise LookalikeError(f"no products loaded from {path}\n{report.summary()}")
    return Catalogue(products, schema, root, report)
