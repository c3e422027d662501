"""Attribute values → integer ids, with an explicit unknown id so unseen values never crash a query."""

from __future__ import annotations

from collections import Counter

import torch

PAD, UNK = 0, 1  # PAD fills short list fields; UNK stands for unseen, missing or dropped-out values


class AttributeVocab:
    def __init__(self, single_fields: list[str], list_fields: list[str], values: dict[str, list[str]]):
        self.single_fields = list(single_fields)
        self.list_fields = list(list_fields)
        self.values = values
        self.index = {f: {v: i + 2 for i, v in enumerate(vs)} for f, vs in values.items()}

    @property
    def fields(self) -> list[str]:
        return [*self.single_fields, *self.list_fields]

    @classmethod
    def build(
        cls, attributes: list[dict], single_fields: list[str], list_fields: list[str], min_count: int = 1
    ) -> AttributeVocab:
        counts: dict[str, Counter[str]] = {f: Counter() for f in [*single_fields, *list_fields]}
        for a in attributes:
            for f in single_fields:
                if f in a:
                    counts[f][str(a[f])] += 1
            for f in list_fields:
                for v in a.get(f, []) or []:
                    counts[f][str(v)] += 1
        values = {f: sorted(v for v, n in c.items() if n >= min_count) for f, c in counts.items()}
        return cls(single_fields, list_fields, values)

    def size(self, field: str) -> int:
        return len(self.values[field]) + 2

    def encode(self, attributes: list[dict]) -> dict[str, torch.Tensor]:
        """One LongTensor per field: (N, 1) for single fields, (N, L) padded for list fields."""
        out: dict[str, torch.Tensor] = {}
        for f in self.single_fields:
            idx = self.index[f]
            out[f] = torch.tensor(
                [[idx.get(str(a[f]), UNK) if f in a else UNK] for a in attributes], dtype=torch.long
            ).reshape(len(attributes), 1)
        for f in self.list_fields:
            idx = self.index[f]
            rows = []
            for a in attributes:
                raw = a.get(f) or []
                raw = [raw] if isinstance(raw, str) else raw
                rows.append([idx.get(str(v), UNK) for v in raw] or [UNK])
            width = max((len(r) for r in rows), default=1)
            out[f] = torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long).reshape(
                len(rows), width
            )
        return out

    def unknown_values(self, attributes: dict) -> dict[str, list[str]]:
        """Values a query uses that training never saw (they map to UNK); reported back to the user."""
        unknown: dict[str, list[str]] = {}
        for f in self.fields:
            raw = attributes.get(f)
            items = [] if raw is None else ([raw] if isinstance(raw, str) else list(raw))
            miss = [str(v) for v in items if str(v) not in self.index[f]]
            if miss:
                unknown[f] = miss
        return unknown

    def to_dict(self) -> dict:
        return {"single_fields": self.single_fields, "list_fields": self.list_fields, "values": self.values}

    @classmethod
    def from_dict(cls, d: dict) -> AttributeVocab:
        return cls(d["single_fields"], d["list_fields"], d["values"])
