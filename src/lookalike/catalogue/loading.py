"""One entry point that recognises what a path holds and hands it to the right loader."""

from __future__ import annotations

import json
from pathlib import Path

from lookalike.catalogue.presets import FASHION_PRODUCTS
from lookalike.catalogue.schema import Catalogue, CatalogueSchema
from lookalike.errors import LookalikeError

SCHEMA_FILE = "lookalike-schema.json"


def read_schema(path: Path) -> CatalogueSchema:
    try:
        return CatalogueSchema.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise LookalikeError(f"schema file not found: {path}") from None
    except (json.JSONDecodeError, ValueError) as e:
        raise LookalikeError(f"invalid schema {path}: {e}") from None


def load_catalogue(
    path: str | Path | None,
    schema: CatalogueSchema | None = None,
    format: str = "auto",
    fallback_schema: CatalogueSchema | None = None,
) -> Catalogue:
    """Load a catalogue directory or file.

    `format`: auto | table | kfashion | synthetic. Auto: a directory with `styles.csv` is the
    fashion-products layout; a CSV/JSONL file is a table (schema from `schema`, or a
    `lookalike-schema.json` beside it, or `fallback_schema`, e.g. a checkpoint's); a directory of label
    JSONs is K-Fashion.
    """
    if path is None or not str(path):
        raise LookalikeError("no catalogue given: the run config's data.catalog is not set")
    if format == "synthetic" or str(path).startswith("synthetic"):
        from lookalike.catalogue.synthetic import synthetic_catalogue

        n = str(path).partition(":")[2]
        return synthetic_catalogue(n=int(n) if n else 600)
    p = Path(path)
    if not p.exists():
        raise LookalikeError(f"catalogue path does not exist: {p}")
    if format == "kfashion" or (
        format == "auto" and p.is_dir() and not (p / "styles.csv").exists() and not (p / SCHEMA_FILE).exists()
    ):
        from lookalike.catalogue.kfashion import load_kfashion

        return load_kfashion(p)
    from lookalike.catalogue.tabular import load_table

    if p.is_dir():
        table = p / "styles.csv"
        if not table.exists():
            tables = sorted([*p.glob("*.csv"), *p.glob("*.jsonl")])
            if len(tables) != 1:
                raise LookalikeError(f"{p}: expected styles.csv or exactly one .csv/.jsonl table, found {len(tables)}")
            table = tables[0]
    else:
        table = p
    if schema is None:
        sidecar = table.parent / SCHEMA_FILE
        if sidecar.exists():
            schema = read_schema(sidecar)
        elif table.name == "styles.csv":
            schema = FASHION_PRODUCTS
        elif fallback_schema is not None:
            schema = fallback_schema
        else:
            raise LookalikeError(f"{table}: no schema given; pass --schema or put {SCHEMA_FILE} beside it")
    return load_table(table, schema)
