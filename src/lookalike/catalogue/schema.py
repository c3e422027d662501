"""The data model every loader produces and every later stage consumes."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

AttrValue = str | list[str]


class CatalogueSchema(BaseModel):
    """Which columns are what. Saved with every run so a checkpoint knows the fields it was trained on."""

    id_field: str = "id"
    image_field: str | None = Field(None, description="column holding an image path (relative to the catalogue root)")
    image_template: str | None = Field(None, description="image path built from the row, e.g. 'images/{id}.jpg'")
    single_fields: list[str] = Field(default_factory=list)
    list_fields: list[str] = Field(default_factory=list)
    list_separator: str = "|"
    text_field: str | None = None
    category_field: str | None = Field(None, description="field used to stratify splits and break metrics down")
    sales_field: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CatalogueSchema:
        overlap = set(self.single_fields) & set(self.list_fields)
        if overlap:
            raise ValueError(f"fields declared both single and list: {sorted(overlap)}")
        if not self.single_fields and not self.list_fields:
            raise ValueError("schema declares no attribute fields")
        if self.category_field and self.category_field not in self.fields:
            raise ValueError(f"category_field {self.category_field!r} is not an attribute field")
        return self

    @property
    def fields(self) -> list[str]:
        return [*self.single_fields, *self.list_fields]


@dataclass(frozen=True)
class ImageRef:
    """An image on disk, optionally a crop box (left, top, right, bottom) inside it."""

    path: Path
    box: tuple[int, int, int, int] | None = None

    def cache_suffix(self) -> str:
        return "" if self.box is None else "#box=" + ",".join(map(str, self.box))


@dataclass
class Product:
    id: str
    image: ImageRef
    attributes: dict[str, AttrValue]
    text: str = ""
    sales: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def value(self, name: str) -> str:
        """A field as one comparable string (list fields sorted and joined)."""
        v = self.attributes.get(name, "")
        return "|".join(sorted(v)) if isinstance(v, list) else str(v)


@dataclass
class LoadReport:
    """Counts of what loaded and what was skipped, by reason, with a few examples of each."""

    source: str
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, Counter] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(where)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {self.loaded} products, skipped {sum(self.skipped.values())}"]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {n:>6} × {reason} (e.g. {', '.join(self.examples.get(reason, []))})")
        for name, counter in self.counts.items():
            lines.append(f"  per {name}: " + ", ".join(f"{k}={v}" for k, v in counter.most_common()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": self.loaded,
            "skipped": dict(self.skipped),
            "examples": self.examples,
            "counts": {k: dict(v) for k, v in self.counts.items()},
        }


@dataclass
class Catalogue:
    products: list[Product]
    schema: CatalogueSchema
    root: Path
    report: LoadReport

    def __len__(self) -> int:
        return len(self.products)

    def subset(self, ids: list[str] | set[str]) -> Catalogue:
        keep = set(ids)
        return Catalogue([p for p in self.products if p.id in keep], self.schema, self.root, self.report)

    def drop(self, ids: set[str], reason: str) -> Catalogue:
        """Remove products (e.g. whose image failed to decode), counting them in the report."""
        for pid in sorted(ids):
            self.report.skip(reason, pid)
        self.report.loaded -= len(ids)
        return Catalogue([p for p in self.products if p.id not in ids], self.schema, self.root, self.report)

    def values(self, name: str) -> list[str]:
        return [p.value(name) for p in self.products]

    def to_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for p in self.products:
                f.write(
                    json.dumps(
                        {"id": p.id, "image": str(p.image.path), **p.attributes, "text": p.text}, ensure_ascii=False
                    )
                    + "\n"
                )
