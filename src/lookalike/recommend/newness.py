"""Which products are "new": a catalogue rule, written `FIELD>=NUMBER` (a date/season year) or
`FIELD=V1,V2` (a flag column such as `is_new=1,true,yes`, or seasons such as `season=Summer`)."""

from __future__ import annotations

import re

from pydantic import BaseModel, model_validator

from lookalike.catalogue import Product
from lookalike.errors import LookalikeError

_RULE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(>=|=)\s*(.+?)\s*$")


class NewRule(BaseModel):
    field: str
    at_least: float | None = None
    values: list[str] | None = None

    @model_validator(mode="after")
    def _one(self) -> NewRule:
        if (self.at_least is None) == (self.values is None):
            raise ValueError("a new-product rule needs exactly one of at_least / values")
        return self

    @classmethod
    def parse(cls, text: str) -> NewRule:
        m = _RULE.match(text or "")
        if not m:
            raise LookalikeError(f"new-product rule {text!r} must look like FIELD>=NUMBER or FIELD=V1,V2")
        field, op, rhs = m.groups()
        if op == ">=":
            try:
                return cls(field=field, at_least=float(rhs))
            except ValueError:
                raise LookalikeError(f"new-product rule {text!r}: {rhs!r} is not a number") from None
        return cls(field=field, values=[v.strip() for v in rhs.split(",") if v.strip()])

    def __str__(self) -> str:
        return f"{self.field}>={self.at_least:g}" if self.values is None else f"{self.field}={','.join(self.values)}"

    def raw(self, p: Product):
        return p.attributes.get(self.field, p.extra.get(self.field))

    def is_new(self, p: Product) -> bool:
        v = self.raw(p)
        if v is None or v == "":
            return False
        if self.values is not None:
            vals = v if isinstance(v, list) else [v]
            return any(str(x).strip().lower() in {w.lower() for w in self.values} for x in vals)
        assert self.at_least is not None  # a rule has exactly one of the two (checked when it is made)
        try:
            return float(v) >= self.at_least
        except (TypeError, ValueError):
            return False


FASHION_PRODUCTS_NEW = NewRule(field="year", at_least=2016)
