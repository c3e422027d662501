"""Form fields shared by the routers: the JSON-in-a-field and sales-CSV parsers, and the common form types.

Every endpoint takes multipart form fields (files and JSON-in-a-field alike), so one curl style works
everywhere and the browser posts FormData. A malformed field is a LookalikeError naming it (answered 400).
Client JSON is parsed here only (`parse_json`), with a nesting limit: Python's parser recurses, so a few
kilobytes of brackets would otherwise end in a RecursionError (a 500), here or in whatever walks the value.
"""

import csv
import io
import json
from typing import Annotated, Any

from fastapi import Form

from lookalike.errors import LookalikeError

Diversity = Annotated[float, Form(ge=0, le=1, description="MMR diversity weight (1 − λ); 0 = plain top-K")]
Filters = Annotated[
    str | None,
    Form(
        description="JSON object of metadata equality / IN filters, e.g. "
        '{"masterCategory": "Apparel", "baseColour": ["Red", "Blue"]}'
    ),
]


def k_form(max_k: int) -> Any:
    """The results-per-list form field (`Annotated[int, k_form(max_k)]`), bounded by the server's max_k so the
    bound is validated and shows in the OpenAPI schema."""
    return Form(ge=1, le=max_k, description=f"results per list (1..{max_k})")


MAX_DEPTH = 32  # attributes, filters and sales are two levels deep; nothing a client means goes past a handful


def parse_json(raw: str, name: str):
    """JSON text from a client: a LookalikeError naming `name` if it is malformed or nested past MAX_DEPTH."""
    try:
        v = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LookalikeError(f"{name} is not valid JSON: {e}") from None
    except RecursionError:
        v = None
    else:
        stack, depth = [(v, 1)], 0
        while stack and depth <= MAX_DEPTH:
            x, d = stack.pop()
            if isinstance(x, (dict, list)):
                depth = max(depth, d)
                stack += [(y, d + 1) for y in (x.values() if isinstance(x, dict) else x)]
        if depth <= MAX_DEPTH:
            return v
    raise LookalikeError(f"{name} is nested more than {MAX_DEPTH} levels deep")


def json_field(raw: str | None, name: str, kind: type = dict):
    if raw is None or raw == "":
        return None
    v = parse_json(raw, name)
    if not isinstance(v, kind):
        raise LookalikeError(f"{name} must be a JSON {'object' if kind is dict else kind.__name__}, got {raw[:80]!r}")
    return v


def parse_sales_csv(data: bytes, name: str) -> dict[str, float]:
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except UnicodeDecodeError:
        raise LookalikeError(f"sales file {name!r} is not UTF-8 text") from None
    cols = set(rows[0]) if rows else set()
    units = "units" if "units" in cols else "sales" if "sales" in cols else None
    if "id" not in cols or units is None:
        raise LookalikeError(f"sales file {name!r} needs columns id and units (or sales); found {sorted(cols)}")
    out = {}
    for n, r in enumerate(rows, 2):
        try:
            out[r["id"].strip()] = float(r[units])
        except (TypeError, ValueError):
            raise LookalikeError(f"sales file {name!r} line {n}: {units} value {r[units]!r} is not a number") from None
    return out
