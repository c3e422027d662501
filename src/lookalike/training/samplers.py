"""Hierarchical P×K batch sampler: batches of sibling classes, so in-batch negatives are hard.

A random batch of fashion products mostly pairs a shirt with a watch, a negative any model already
separates. Here each batch starts from one class (a relevance key, e.g. all attribute values) and
fills up with the classes nearest to it in the category tree (masterCategory → subCategory →
articleType): first those of the same article type (other colours, seasons …), then the same
sub-category (coats with jackets), then the same master category, then anything. P classes, up to K
products each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np


class HierarchicalBatchSampler:
    def __init__(
        self,
        labels: np.ndarray,
        paths: Sequence[tuple[str, ...]],
        classes_per_batch: int = 32,
        samples_per_class: int = 4,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ):
        """labels: (n,) class of each item; paths: each item's category path, root first."""
        labels = np.asarray(labels)
        if len(labels) != len(paths):
            raise ValueError(f"{len(labels)} labels but {len(paths)} category paths")
        self.P, self.K = classes_per_batch, samples_per_class
        self.rng = np.random.default_rng(seed)
        self.labels = labels
        members: dict[int, list[int]] = defaultdict(list)
        label_path: dict[int, tuple[str, ...]] = {}
        for i, (lab, path) in enumerate(zip(labels.tolist(), paths)):
            members[lab].append(i)
            label_path.setdefault(lab, tuple(path))
        self.members = {k: np.asarray(v) for k, v in members.items()}
        self.depth = max((len(p) for p in label_path.values()), default=0)
        self.label_path = label_path
        # tiers[d][prefix] = classes whose path starts with that prefix of length d (d = 0: every class)
        self.tiers: list[dict[tuple[str, ...], np.ndarray]] = []
        for d in range(self.depth + 1):
            groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
            for lab, path in label_path.items():
                groups[path[:d]].append(lab)
            self.tiers.append({k: np.asarray(v) for k, v in groups.items()})
        self.batches_per_epoch = batches_per_epoch or max(1, len(labels) // (self.P * self.K))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def classes_near(self, seed_label: int) -> list[int]:
        """`seed_label` then up to P−1 classes, nearest in the tree first (random within a tier)."""
        path = self.label_path[seed_label]
        chosen, seen = [seed_label], {seed_label}
        for d in range(len(path), -1, -1):
            tier = self.tiers[d].get(path[:d], np.zeros(0, np.int64))
            for lab in self.rng.permutation(tier).tolist():
                if len(chosen) >= self.P:
                    return chosen
                if lab not in seen:
                    chosen.append(lab)
                    seen.add(lab)
        return chosen

    def __iter__(self) -> Iterator[np.ndarray]:
        for _ in range(self.batches_per_epoch):
            seed_label = int(self.labels[self.rng.integers(len(self.labels))])  # classes drawn as often as products
            batch = []
            for lab in self.classes_near(seed_label):
                m = self.members[lab]
                batch.append(m if len(m) <= self.K else self.rng.choice(m, self.K, replace=False))
            yield np.concatenate(batch)
