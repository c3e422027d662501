"""Item-bank loader for CSV / JSON Lines: id, question text, optional figure paths, optional labels.

Bad records never stop a load and are never silently lost: empty or non-UTF-8 text, a missing (or ambiguous)
figure, a duplicate id or an unparsable row is skipped and counted (by reason, with examples) in the report.
Files are decoded with `surrogateescape`, so one bad byte costs one record, not the whole file.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lookalike.catalogue.schema import LoadReport
from lookalike.catalogue.tabular import is_utf8
from lookalike.errors import LookalikeError
from lookalike.itembank.figures import FigureResolver


class ItemBankSchema(BaseModel):
    """Which columns are what. `id_field=None` numbers the rows (``row-<line>``), for files without ids."""

    model_config = ConfigDict(extra="forbid")
    id_field: str | None = "id"
    text_field: str = "text"
    image_field: str | None = Field(None, description="figure path(s), relative to the file; '|'-separated in CSV")
    explanation_field: str | None = Field(None, description="explanation image path(s), resolved like figures")
    label_field: str | None = Field(None, description="label(s) used for the label ground truth; '|'-separated")
    separator: str = "|"


PRESETS = {"kmwp": ItemBankSchema(id_field=None, text_field="problem", label_field="class")}


@dataclass
class Item:
    id: str
    text: str
    images: list[Path] = field(default_factory=list)
    labels: tuple[str, ...] = ()
    explanations: list[Path] = field(default_factory=list)


@dataclass
class ItemBank:
    items: list[Item]
    schema: ItemBankSchema
    report: LoadReport

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    @property
    def texts(self) -> list[str]:
        return [it.text for it in self.items]

    def label_of(self) -> list[str]:
        """One comparable label string per item (multi-labels joined sorted), '' when unlabelled."""
        return ["|".join(sorted(it.labels)) for it in self.items]

    def head(self, n: int) -> ItemBank:
        return ItemBank(self.items[:n], self.schema, self.report)


def _rows(path: Path, report: LoadReport) -> Iterator[tuple[str, int, dict]]:
    """(location, record number from 1, row); CSV records may span lines (quoted newlines)."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    report.skip("malformed JSON" if is_utf8(line) else "non-UTF-8 text", f"{path.name}:{n}")
                    continue
                if not isinstance(row, dict):
                    report.skip("malformed JSON", f"{path.name}:{n}")
                    continue
                yield f"{path.name}:{n}", n, row
    else:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f, restkey="__extra__")
            for n, row in enumerate(reader, 1):
                where = f"{path.name}:{reader.line_num}"
                if "__extra__" in row or None in row.values():
                    report.skip("wrong number of columns", where)
                    continue
                yield where, n, row


def _split(raw, sep: str) -> list[str]:
    if raw is None:
        return []
    values = raw if isinstance(raw, list) else str(raw).split(sep)
    return [str(v).strip() for v in values if str(v).strip()]


def _check_columns(path: Path, schema: ItemBankSchema) -> None:
    """Name a wrong field up front (a typo would otherwise skip every row as 'empty text')."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        header = next(csv.reader(f), [])
    for name in (schema.id_field, schema.text_field, schema.image_field, schema.label_field, schema.explanation_field):
        if name and name not in header:
            raise LookalikeError(f"{path}: no column {name!r}; columns are {header}")


def load_item_bank(path: str | Path, schema: ItemBankSchema | None = None) -> ItemBank:
    path = Path(path)
    schema = schema or ItemBankSchema()
    if not path.is_file():
        raise LookalikeError(f"item bank file not found: {path}")
    _check_columns(path, schema)
    report = LoadReport(source=str(path))
    resolver = FigureResolver(path.parent)  # date folders, file names alone (itembank/figures.py)
    items: list[Item] = []
    seen: set[str] = set()
    texts: Counter = Counter()
    for where, n, row in _rows(path, report):
        iid = f"row-{n}" if schema.id_field is None else str(row.get(schema.id_field) or "").strip()
        if not iid:
            report.skip(f"missing {schema.id_field}", where)
            continue
        text = str(row.get(schema.text_field) or "").strip()
        if not is_utf8(iid) or not is_utf8(text):
            report.skip("non-UTF-8 text", where)
            continue
        if not text:
            report.skip("empty text", f"{where} ({iid})")
            continue
        if iid in seen:
            report.skip("duplicate id", f"{where} ({iid})")
            continue
        figures: dict[str, list[Path]] = {}
        problem = None
        for kind, fld in (("image", schema.image_field), ("explanation image", schema.explanation_field)):
            figures[kind] = []
            for raw in _split(row.get(fld), schema.separator) if fld else []:
                p, why = resolver.resolve(raw)
                if p is None:
                    problem = problem or (f"{why} {kind}", f"{where} ({raw})")
                else:
                    figures[kind].append(p)
        if problem:
            report.skip(*problem)
            continue
        labels = tuple(_split(row.get(schema.label_field), schema.separator)) if schema.label_field else ()
        items.append(Item(iid, text, figures["image"], labels, figures["explanation image"]))
        seen.add(iid)
        texts[text] += 1
    report.loaded = len(items)
    if schema.label_field:
        report.counts["label"] = Counter("|".join(sorted(it.labels)) or "(none)" for it in items)
    dup_texts = sum(n - 1 for n in texts.values() if n > 1)
    if dup_texts:  # kept (different ids), but a verbatim copy is a trivially perfect neighbour: say so
        report.counts["note"] = Counter({"items whose text repeats an earlier item": dup_texts})
    if not items:
        raise LookalikeError(f"no items loaded from {path}\n{report.summary()}")
    return ItemBank(items, schema, report)
