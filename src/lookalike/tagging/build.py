"""Training a model's tagger and saving it inside the checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lookalike.tagging.colour import colour_features
from lookalike.tagging.tagger import Labelled, Tagger, zero_shot_vectors

logger = logging.getLogger(__name__)


def labelled(emb, vectors: np.ndarray, cache_root: Path) -> Labelled:
    """An embedded catalogue as the tagger reads it: `vectors` (the served space, one row per product), colour
    features from its images (cached), attributes and ids. A product whose pixels cannot be read for colour
    was already dropped by the embedding (same file), so none is lost here silently."""
    colour, failed = colour_features([p.image for p in emb.products], cache_root)
    if failed:
        logger.warning("colour features: %d images unreadable (their colour features are zero)", len(failed))
    return Labelled(vectors, colour, [p.attributes for p in emb.products], [p.id for p in emb.products])


def train_tagger(model, emb, idx: dict[str, np.ndarray], cache_root: Path) -> tuple[Tagger, Labelled]:
    """The tagger of a trained model (heads on the training split, C and the combination on validation, the
    towers' zero-shot scores among its methods) and every product as it reads them."""
    from lookalike.vectors import unit

    data = labelled(emb, unit(model.space.transform(emb.features)), cache_root)
    schema = emb.catalogue.schema
    tagger = Tagger.fit(
        data.take(idx["train"]),
        data.take(idx["val"]),
        schema.single_fields,
        schema.list_fields,
        zero_shot_vectors(model, schema.fields),
    )
    return tagger, data


def attach(checkpoint: Path, tagger: Tagger) -> None:
    """Save `tagger` inside an existing checkpoint (atomically: the old file or the new, never half)."""
    import torch

    from lookalike.modelfile import save_atomic

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    payload["tagger"] = tagger.state()
    save_atomic(payload, Path(checkpoint))
