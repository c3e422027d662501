"""lookalike: learn product attributes and text into a frozen image space, search it, measure it.

The public API, for a notebook or another program (names load on first use, so `import lookalike` stays light):

    import lookalike
    model = lookalike.load_model("runs/fashion-products/checkpoints/best_model.pt")
    vector, unknown, ignored = model.attributes({"articleType": "Tshirts", "baseColour": "Black"})
    hits = lookalike.open_catalogue(model, "../shared/data/fashion-products").search(vector, k=10, corrected=True)

The README's "Python API" section shows the rest (a test runs it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name → module that defines it (and the name there, where it differs)
_EXPORTS: dict[str, str | tuple[str, str]] = {
    "load_model": "lookalike.inference",
    "QueryEncoder": "lookalike.inference",
    "LookalikeModel": "lookalike.model",
    "create_model": "lookalike.model",
    "RunConfig": "lookalike.config",
    "load_config": "lookalike.config",
    "load_catalogue": "lookalike.catalogue",
    "embed_catalogue": "lookalike.encoders.embedding",
    "list_models": "lookalike.encoders",
    "create_image_encoder": "lookalike.encoders",
    "create_text_encoder": "lookalike.encoders",
    "InfoNCELoss": "lookalike.losses",
    "MultiSimilarityLoss": "lookalike.losses",
    "TripletLoss": "lookalike.losses",
    "Searcher": "lookalike.retrieval.search",
    "open_catalogue": "lookalike.retrieval.search",
    "rank": "lookalike.retrieval.ranking",
    "Gallery": "lookalike.retrieval.ranking",
    "StoreGallery": "lookalike.retrieval.ranking",
    "open_store": "lookalike.retrieval.stores",
    "StoreItem": "lookalike.retrieval.stores",
    "evaluate": ("lookalike.evaluation.evaluate", "evaluate_checkpoint"),
    "LookalikeError": "lookalike.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'lookalike' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
