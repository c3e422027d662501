"""Graded relatedness of two products from their attributes: the soft part of the InfoNCE targets.

Counting shared fields treats them alike, so two products of the same colour, season, usage and
gender (4 of 7 fashion-products fields) looked more related than two of the same article type in
other colours (3 of 7, with its parent categories) — the opposite of what a shopper sees. Lin's
information-theoretic similarity (Lin, ICML 1998) weighs each shared value by how much it says,
−log p(value) on the training set, so sharing a rare article type counts more than sharing the
common usage "Casual"; the category field can be given extra weight on top.

Chosen on validation (fashion-products, whole validation gallery, JSON → image, 20 epochs, text tower off;
`python benchmarks/ablations.py --parts soft`): with the category (articleType) at weight 0.5, articleType
precision@10 0.8386 → 0.8598, while nDCG@10 over all seven fields went 0.4179 → 0.4032 (the hubness
correction at query time more than restores it: 0.4493).
"""

from __future__ import annotations

import torch

from lookalike.towers.vocab import AttributeVocab


def value_information(attributes: dict[str, torch.Tensor], vocab: AttributeVocab) -> dict[str, torch.Tensor]:
    """Per single-valued field, −log p(value id) over the given (training) products, indexed by id;
    ids they never use (unknown) count as seen once."""
    info = {}
    for f in vocab.single_fields:
        ids = attributes[f][:, 0]
        counts = torch.bincount(ids, minlength=vocab.size(f)).float().clamp(min=1)
        info[f] = -torch.log(counts / len(ids))
    return info


def relatedness(
    batch: dict[str, torch.Tensor],
    information: dict[str, torch.Tensor],
    category: str | None = None,
    category_weight: float = 0.0,
) -> torch.Tensor:
    """(B, B) in [0, 1], 1 on the diagonal: the information in the single-valued attributes two
    products share over the information in all of them (Lin), mixed with [same `category` value]."""
    fields = list(information)
    if not fields:  # only list-valued attributes: nothing to grade by, each product is related to itself
        first = next(iter(batch.values()))
        return torch.eye(len(first), device=first.device)
    ids = torch.cat([batch[f][:, :1] for f in fields], dim=1)  # (B, F)
    info = torch.stack([information[f][batch[f][:, 0]] for f in fields], dim=1)
    same = ids[:, None, :] == ids[None, :, :]
    pair = info[:, None, :] + info[None, :, :]  # (B, B, F)
    total = pair.sum(dim=2)
    lin = torch.where(total > 0, (pair * same).sum(dim=2) / total.clamp(min=1e-12), same.all(dim=2).float())
    if category is None or category_weight == 0:
        return lin
    return (1 - category_weight) * lin + category_weight * _same(batch[category][:, 0])


def _same(ids: torch.Tensor) -> torch.Tensor:
    return (ids[:, None] == ids[None, :]).float()
