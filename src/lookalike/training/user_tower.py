"""Training the user tower (towers/user.py) with InfoNCE on next-item prediction, and `lookalike train-user-tower`.

Each customer's events (a file, or the event log beside a store), in time order, give one example per click or
purchase after the first event: the earlier events (not impressions; the latest `max_history`) are the history, the
product clicked or bought the target. A batch scores every history's query against every target's stored vector
(in-batch negatives) at a fixed temperature; the loss is the cross-entropy of the right target.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lookalike.errors import LookalikeError
from lookalike.towers.user import TYPES, UserTower, age_buckets

logger = logging.getLogger(__name__)


@dataclass
class Example:
    rows: list[int]  # the history's items, rows of the vector matrix
    types: list[int]
    ages: np.ndarray
    target: int


def examples_from_events(
    events: list[tuple[str, str, str, float]], row_of: dict[str, int], max_history: int = 50
) -> list[Example]:
    """(customer, product, type, ts) events → next-click / next-purchase examples (unknown products dropped)."""
    by_customer: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    for customer, product, kind, ts in events:
        if kind != "impression" and product in row_of and kind in TYPES:
            by_customer[customer].append((ts, product, kind))
    out = []
    for customer in sorted(by_customer):
        evs = sorted(by_customer[customer])
        for t in range(1, len(evs)):
            if evs[t][2] not in ("click", "purchase"):
                continue
            past = evs[max(0, t - max_history) : t]
            out.append(
                Example(
                    [row_of[p] for _, p, _ in past],
                    [TYPES.index(k) for _, _, k in past],
                    age_buckets([ts for ts, _, _ in past]),
                    row_of[evs[t][1]],
                )
            )
    return out


def _batch(examples: list[Example], vectors: torch.Tensor):
    length = max(len(e.rows) for e in examples)
    b = len(examples)
    v = torch.zeros(b, length, vectors.shape[1])
    types = torch.zeros(b, length, dtype=torch.long)
    ages = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.rows)
        v[i, :n] = vectors[e.rows]
        types[i, :n] = torch.tensor(e.types)
        ages[i, :n] = torch.as_tensor(e.ages)
        mask[i, :n] = True
    return v, types, ages, mask, torch.tensor([e.target for e in examples])


def _batches(examples: list[Example], batch_size: int, rng: random.Random, pool: int = 32) -> list[list[int]]:
    """Shuffled batches of examples of similar history lengths: a batch is padded to its longest history, so
    sorting by length within pools of `pool` batches cuts the padding (what lets benchmarks/personalise.py train on
    50k sessions); the pools and the batches' order stay random."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), pool * batch_size):
        part = sorted(order[start : start + pool * batch_size], key=lambda i: len(examples[i].rows))
        out += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def train_user_tower(
    examples: list[Example],
    vectors: np.ndarray,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 3e-3,
    temperature: float = 0.05,
    seed: int = 0,
    heads: int = 4,
) -> tuple[UserTower, list[dict]]:
    """The trained tower and its loss per epoch. `vectors`: the catalogue's stored vectors, rows as in the examples."""
    if len(examples) < 2:
        raise LookalikeError(f"the user tower needs at least 2 next-click examples, got {len(examples)}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    items = torch.as_tensor(np.asarray(vectors, np.float32))
    tower = UserTower(items.shape[1], heads)
    opt = torch.optim.AdamW(tower.parameters(), lr=lr, weight_decay=0.01)
    history = []
    for epoch in range(1, epochs + 1):
        tower.train()
        total, n, t0 = 0.0, 0, time.perf_counter()
        for batch in _batches(examples, batch_size, rng):
            chunk = [examples[i] for i in batch]
            if len(chunk) < 2:
                continue
            v, types, ages, mask, targets = _batch(chunk, items)
            u = tower(v, types, ages, mask)
            t = items[targets]
            logits = u @ t.T / temperature
            same = targets[:, None] == targets[None, :]  # a repeated target is no negative of its own row
            logits = logits.masked_fill(same & ~torch.eye(len(chunk), dtype=torch.bool), -math.inf)
            loss = F.cross_entropy(logits, torch.arange(len(chunk)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
            n += len(chunk)
        seconds = round(time.perf_counter() - t0, 2)
        history.append({"epoch": epoch, "loss": round(total / max(n, 1), 4), "seconds": seconds})
        logger.info(f"user tower epoch {epoch}: loss {history[-1]['loss']} ({history[-1]['seconds']} s)")
    return tower.eval(), history


def cmd_train_user_tower(args) -> None:
    from lookalike.recommend.events import parse_ts, read_rows
    from lookalike.retrieval.stores import open_store

    store = open_store(args.store)
    try:
        ids, vectors, _ = store.items()
    finally:
        store.close()
    row_of = {i: r for r, i in enumerate(ids)}
    events = []
    for _, r in read_rows(Path(args.events)):
        try:
            if r is not None:
                ts = parse_ts(r["ts"], math.inf)
                events.append((str(r["customer_id"]), str(r["product_id"]), str(r["type"]), ts))
        except (KeyError, ValueError):
            continue
    examples = examples_from_events(events, row_of)
    logger.info(f"{len(events)} events → {len(examples)} next-click / next-purchase examples")
    tower, history = train_user_tower(examples, vectors, epochs=args.epochs, seed=args.seed)
    tower.save(args.out, {"events": args.events, "examples": len(examples), "history": history, "seed": args.seed})
    logger.info(f"saved the user tower to {args.out}")
