"""A trained lookalike model: vocabulary + frozen image space + query towers, saved as one checkpoint.

`create_model` builds one from a config (as open_clip's factory does); `LookalikeModel.load` restores
one from a checkpoint with everything needed to embed queries, including which frozen encoders
define the image and text spaces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lookalike.catalogue import Catalogue, CatalogueSchema, load_catalogue
from lookalike.config import RunConfig
from lookalike.devices import module_device
from lookalike.encoders.embedding import Embedded, embed_catalogue
from lookalike.encoders.projection import ImageSpace
from lookalike.errors import LookalikeError
from lookalike.modelfile import read_model_file, save_atomic
from lookalike.retrieval.hubness import hub_penalty
from lookalike.towers import AttributeVocab
from lookalike.towers.registry import create_attribute_tower, create_text_tower

CHECKPOINT_FORMAT = "lookalike-checkpoint/1"


class LookalikeModel(torch.nn.Module):
    def __init__(self, vocab: AttributeVocab, space: ImageSpace, out_dim: int, text_dim: int, config: RunConfig):
        super().__init__()
        t = config.tower
        self.vocab, self.space, self.config = vocab, space, config
        self.out_dim, self.text_dim = out_dim, text_dim
        self.attribute_tower = create_attribute_tower(t, vocab, out_dim)
        self.text_tower = create_text_tower(t, text_dim, out_dim)
        # The training products' encoded attributes: the query bank of the hubness correction.
        self.query_bank: dict[str, torch.Tensor] | None = None

    def encode_attributes(self, attributes: list[dict], batch_size: int = 4096) -> np.ndarray:
        parts = [
            self.encode_ids(self.vocab.encode(attributes[s : s + batch_size]))
            for s in range(0, len(attributes), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.out_dim), np.float32)

    @torch.inference_mode()
    def encode_ids(self, encoded: dict[str, torch.Tensor], batch_size: int = 4096) -> np.ndarray:
        """Attribute tower on already encoded attributes (`AttributeVocab.encode`)."""
        was = self.training
        self.eval()
        n = len(next(iter(encoded.values())))
        device = module_device(self)  # a model on a GPU encodes there; the vectors come back to the CPU
        parts = [
            self.attribute_tower({f: v[s : s + batch_size].to(device) for f, v in encoded.items()})
            .float()
            .cpu()
            .numpy()
            for s in range(0, n, batch_size)
        ]
        self.train(was)
        return np.concatenate(parts) if parts else np.zeros((0, self.out_dim), np.float32)

    def query_bank_vectors(self) -> np.ndarray | None:
        return None if self.query_bank is None else self.encode_ids(self.query_bank)

    def gallery_bias(self, gallery: np.ndarray, bank: np.ndarray | None = None) -> np.ndarray | None:
        """Score offset per gallery image for JSON and text queries: −weight × its hub penalty against the
        training queries (retrieval/hubness.py); None when the correction is off or there is no bank.
        `bank`: the bank's vectors if already computed (a service computes them once)."""
        r = self.config.retrieval
        if not r.hubness_weight or self.query_bank is None or len(gallery) == 0:
            return None
        bank = self.encode_ids(self.query_bank) if bank is None else bank
        return -r.hubness_weight * hub_penalty(gallery, bank, r.hubness_k)

    @torch.inference_mode()
    def encode_sentence_vectors(self, vectors: np.ndarray) -> np.ndarray:
        was = self.training
        self.eval()
        x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).to(module_device(self))
        out = self.text_tower(x).float().cpu().numpy()
        self.train(was)
        return out

    def save(self, path: Path, **extra) -> None:
        space = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in self.space.state().items()}
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.model_dump(mode="json", by_alias=True),
            "vocab": self.vocab.to_dict(),
            "space": space,
            "out_dim": self.out_dim,
            "text_dim": self.text_dim,
            "state_dict": self.state_dict(),
            "query_bank": self.query_bank,
            **extra,
        }
        save_atomic(payload, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> tuple[LookalikeModel, dict]:
        payload = read_model_file(path, CHECKPOINT_FORMAT, "checkpoint", "a lookalike checkpoint")
        space = ImageSpace.from_state(
            {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in payload["space"].items()}
        )
        model = cls(
            AttributeVocab.from_dict(payload["vocab"]),
            space,
            payload["out_dim"],
            payload["text_dim"],
            RunConfig.model_validate(payload["config"]),
        )
        model.load_state_dict(payload["state_dict"])
        model.query_bank = payload.get("query_bank")
        model.eval()
        return model, payload


def create_model(
    config: RunConfig, vocab: AttributeVocab, space: ImageSpace, image_dim: int, text_dim: int
) -> LookalikeModel:
    torch.manual_seed(config.train.seed)
    return LookalikeModel(vocab, space, space.out_dim or image_dim, text_dim, config)


def checkpoint_schema(payload: dict) -> CatalogueSchema | None:
    """The catalogue schema a checkpoint was trained on (so a bare CSV can be read the same way)."""
    return CatalogueSchema.model_validate(payload["schema"]) if payload.get("schema") else None


def with_encoder(cfg: RunConfig, cache_dir: str | None = None, device: str | None = None) -> RunConfig:
    """`cfg` with another embedding cache and/or encoder device (what a checkpoint's user may change)."""
    update = {k: v for k, v in (("cache_dir", cache_dir), ("device", device)) if v}
    return cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update=update)}) if update else cfg


def load_for_checkpoint(
    model: LookalikeModel,
    payload: dict,
    catalog: str,
    schema: CatalogueSchema | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    device: str | None = None,
) -> tuple[Embedded, RunConfig]:
    """Load and embed a catalogue with the encoder settings the checkpoint was trained with (on `device`)."""
    cfg = with_encoder(model.config, cache_dir, device)
    cat: Catalogue = load_catalogue(catalog, schema, fallback_schema=checkpoint_schema(payload))
    missing = [f for f in model.vocab.fields if f not in cat.schema.fields]
    if missing:
        raise LookalikeError(f"catalogue {catalog} lacks fields the model was trained on: {missing}")
    return embed_catalogue(cat, cfg, progress), cfg


def build_ensemble(checkpoints: list[str | Path]) -> tuple[LookalikeModel, dict]:
    """One checkpoint whose towers average the unit query vectors of `checkpoints`' towers. They must share
    the image space (same frozen encoder, projection and fitted space) and the attribute vocabulary (the same
    training split), or their vectors would not be comparable; the first one's settings serve the ensemble
    (retrieval, schema, hubness bank)."""
    if len(checkpoints) < 2:
        raise LookalikeError(f"an ensemble needs at least two checkpoints, got {len(checkpoints)}")
    loaded = [LookalikeModel.load(p) for p in checkpoints]
    (first, payload), first_path = loaded[0], checkpoints[0]
    local = {"cache_dir", "device", "batch_size"}  # where and how fast, not which vectors
    encoder = first.config.encoder.model_dump(exclude=local)
    for (m, p), path in zip(loaded[1:], checkpoints[1:]):
        differs = [
            what
            for what, same in (
                ("frozen image encoder settings", m.config.encoder.model_dump(exclude=local) == encoder),
                ("fitted image space", _same_space(p["space"], payload["space"])),
                ("attribute vocabulary (training split)", p["vocab"] == payload["vocab"]),
                ("query and text dims", (m.out_dim, m.text_dim) == (first.out_dim, first.text_dim)),
            )
            if not same
        ]
        if differs:
            raise LookalikeError(f"{path} cannot join an ensemble with {first_path}: its {', '.join(differs)} differ")
    members = []
    for m, _ in loaded:
        t = m.config.tower
        members.extend(t.members if t.name == "ensemble" else [t])
    tower = first.config.tower.model_copy(update={"name": "ensemble", "members": members})
    config = first.config.model_copy(update={"tower": tower})
    ensemble = LookalikeModel(first.vocab, first.space, first.out_dim, first.text_dim, config)
    for part in ("attribute_tower", "text_tower"):
        sources = [t for m, _ in loaded for t in _members(getattr(m, part), m.config.tower.name == "ensemble")]
        for slot, source in zip(getattr(ensemble, part).members, sources):
            slot.load_state_dict(source.state_dict())
    ensemble.query_bank = first.query_bank
    ensemble.eval()
    extra = {k: payload[k] for k in ("schema", "split_sizes") if k in payload}
    return ensemble, {**extra, "ensemble_of": [str(p) for p in checkpoints]}


def _members(tower: torch.nn.Module, ensemble: bool) -> list[torch.nn.Module]:
    """An ensemble's member towers (an ensemble joining another ensemble joins with all of them)."""
    return list(tower.get_submodule("members").children()) if ensemble else [tower]


def _same_space(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True
