"""Training-time augmentations of a batch, each switched on in the run config's `augment` section.

- Synonym replacement: a per-field table (JSON {field: {value: [synonym, ...]}}) adds each synonym to the
  vocabulary; during training a value is replaced by one of its synonyms with probability `synonym_p`, so a
  query that says "줄무늬" lands where "스트라이프" does.
- Attribute mixing within a category: with probability `mix_p` a product takes one field's value (never the
  category's) from another product of the same category: plausible combinations the catalogue lacks.
- Image views: the frozen encoder's vectors of V augmented copies of each training image (encoders/views.py,
  cached); each epoch draws one of the V + 1 images per product.
- MixUp on the cached vectors: each target is mixed with a same-category product's by λ ~ Beta(α, α),
  λ ≥ 0.5 (the query's own image stays dominant), then renormalised.

All randomness comes from the trainer's generator, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from lookalike.config import AugmentConfig, synonyms_path
from lookalike.errors import LookalikeError
from lookalike.towers.vocab import AttributeVocab

logger = logging.getLogger(__name__)


def read_synonyms(name: str | Path, fields: list[str]) -> dict[str, dict[str, list[str]]]:
    """The synonym table, restricted to `fields` (a table may cover fields a catalogue lacks); a malformed
    table is an error naming the file and the entry."""
    path = synonyms_path(name)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LookalikeError(f"synonym table {path} is not valid JSON: {e}") from None
    if not isinstance(table, dict):
        raise LookalikeError(f"synonym table {path} must be a JSON object {{field: {{value: [synonym, ...]}}}}")
    out: dict[str, dict[str, list[str]]] = {}
    for field, entries in table.items():
        ok = isinstance(entries, dict) and all(
            isinstance(v, str) and isinstance(s, list) and all(isinstance(x, str) for x in s)
            for v, s in entries.items()
        )
        if not ok:
            raise LookalikeError(f"synonym table {path}: field {field!r} must map each value to a list of strings")
        if field in fields:
            out[field] = entries
    if not out:
        logger.warning(f"synonym table {path} covers none of the fields {fields}: nothing to replace")
    return out


def synonym_rows(table: dict[str, dict[str, list[str]]], vocab: AttributeVocab, list_fields: list[str]) -> list[dict]:
    """Extra vocabulary rows: each synonym of a value the training split has, unless it is itself a value of
    that field (it would merge two real values; such entries are left out and logged)."""
    rows = []
    for field, entries in table.items():
        known = set(vocab.values.get(field, []))
        for value, synonyms in entries.items():
            if value not in known:
                continue
            for s in synonyms:
                if s in known:
                    logger.warning(f"synonym {s!r} of {field}={value!r} is itself a value of {field}: left out")
                    continue
                rows.append({field: [s] if field in list_fields else s})
    return rows


class Augmenter:
    def __init__(
        self,
        cfg: AugmentConfig,
        vocab: AttributeVocab,
        attributes: dict[str, torch.Tensor],
        images: torch.Tensor,
        category: str | None,
        synonyms: dict[str, dict[str, list[str]]] | None = None,
        views: torch.Tensor | None = None,
    ):
        """`attributes`, `images`: the whole training split, the attributes encoded with `vocab` (which already
        holds the synonyms); `views`: (V, N, D) unit vectors of its images' augmented views, rows as theirs."""
        self.cfg, self.attributes, self.images, self.views = cfg, attributes, images, views
        self.tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for field, entries in (synonyms or {}).items():
            index = vocab.index[field]
            alternatives = {
                index[v]: [index[s] for s in syn if s in index and s not in entries]
                for v, syn in entries.items()
                if v in index
            }
            alternatives = {k: v for k, v in alternatives.items() if v}
            if not alternatives:
                continue
            width = max(len(v) for v in alternatives.values())
            table = torch.arange(vocab.size(field)).unsqueeze(1).repeat(1, width)  # no synonym: itself
            counts = torch.ones(vocab.size(field), dtype=torch.long)
            for k, v in alternatives.items():
                table[k, : len(v)] = torch.tensor(v)
                counts[k] = len(v)
            has = torch.zeros(vocab.size(field), dtype=torch.bool)
            has[list(alternatives)] = True
            self.tables[field] = (table, counts * has)  # count 0: nothing to replace
        self.mix_fields = [f for f in attributes if f != category]
        n = len(next(iter(attributes.values())))
        cats = attributes[category][:, 0] if category else torch.zeros(n, dtype=torch.long)
        self.order = torch.argsort(cats, stable=True)
        _, counts = torch.unique_consecutive(cats[self.order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        # per product: where its category's rows start in `order`, and how many there are
        group = torch.empty(n, dtype=torch.long)
        group[self.order] = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.start, self.count = starts[group], counts[group]

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(self.tables and c.synonym_p) or bool(c.mix_p) or self.views is not None or bool(c.mixup_alpha)

    def partners(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A random product of the same category for each of `idx` (possibly itself)."""
        r = torch.rand(len(idx), generator=gen)
        return self.order[self.start[idx] + (r * self.count[idx]).long().clamp(max=self.count[idx] - 1)]

    def __call__(
        self, attributes: dict[str, torch.Tensor], images: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(tower inputs, image targets) of the training rows `idx`; `attributes` and `images` are those rows
        as the batch holds them (on the training device). Random draws happen on the CPU."""
        c, device = self.cfg, images.device
        out = {f: v.cpu() for f, v in attributes.items()}
        if c.mix_p and self.mix_fields:
            mix = torch.rand(len(idx), generator=gen) < c.mix_p
            partner = self.partners(idx, gen)
            which = torch.randint(len(self.mix_fields), (len(idx),), generator=gen)
            for k, f in enumerate(self.mix_fields):
                rows = mix & (which == k)
                if rows.any():
                    out[f] = out[f].clone()
                    out[f][rows] = self.attributes[f][partner[rows]]
        if c.synonym_p:
            for f, (table, counts) in self.tables.items():
                ids = out[f]
                n = counts[ids]
                pick = (torch.rand(ids.shape, generator=gen) * n.clamp(min=1)).long()
                swap = (torch.rand(ids.shape, generator=gen) < c.synonym_p) & (n > 0)
                out[f] = torch.where(swap, table[ids, pick.clamp(max=table.shape[1] - 1)], ids)
        targets = images
        if self.views is not None:
            view = torch.randint(len(self.views) + 1, (len(idx),), generator=gen)
            rows = view > 0
            if rows.any():
                targets = targets.clone()
                targets[rows.to(device)] = self.views[view[rows] - 1, idx[rows]].to(device, targets.dtype)
        if c.mixup_alpha:
            beta = torch.distributions.Beta(c.mixup_alpha, c.mixup_alpha)
            lam = beta.sample((len(idx),))  # torch's distributions draw from the global generator
            lam = torch.maximum(lam, 1 - lam).unsqueeze(1).to(device)
            partner = self.partners(idx, gen)
            other = self.images[partner].to(device, targets.dtype)
            targets = F.normalize(lam * targets + (1 - lam) * other, dim=-1)
        return {f: v.to(device) for f, v in out.items()}, targets
