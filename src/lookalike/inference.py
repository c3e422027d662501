"""Using a trained model: a checkpoint plus the frozen encoders it was trained with turn attribute JSON,
free text and images into unit vectors of the served space (the query side of every search).

The CLI's `search`, the service and the public API (`lookalike.load_model`) all encode through `QueryEncoder`,
so a query means the same thing wherever it is asked.

With a compact adapter (towers/adapter.py, `--adapter FILE`) every vector it gives, query or catalogue image,
is the adapter's output: the store then holds adapted vectors and queries are mapped by the same adapter
(`space` names it, and stores refuse vectors of another space).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.catalogue import CatalogueSchema
from lookalike.errors import LookalikeError
from lookalike.model import LookalikeModel
from lookalike.vectors import unit

if TYPE_CHECKING:
    from lookalike.encoders.base import ImageEncoder, TextEncoder
    from lookalike.towers.adapter import Adapter


class QueryEncoder:
    """A trained checkpoint plus its frozen encoders: attribute JSON, text and images → the served space."""

    def __init__(
        self,
        model: LookalikeModel,
        payload: dict,
        cache_dir: str | None = None,
        device: str | None = None,
        adapter: Adapter | None = None,
    ):
        """`device` (auto, cpu, cuda[:N], mps): where the towers and the image encoder run (default: the
        checkpoint's encoder.device). `adapter`: every vector is mapped by it (the compact stored vector)."""
        from lookalike.model import checkpoint_schema, with_encoder

        self.model, self.payload = model, payload
        self.cfg = with_encoder(model.config, cache_dir, device)
        if device is not None:
            from lookalike.devices import resolve_device

            model.to(resolve_device(device))
        self.schema: CatalogueSchema | None = checkpoint_schema(payload)
        self._image: ImageEncoder | None = None
        self._text: TextEncoder | None = None
        self._bank: np.ndarray | None = None
        self._offsets: dict[bytes, float] = {}  # vector digest → hubness offset
        self.last_norms: list[float] = []  # raw tower output norms, for the embedding-health KPI
        self.adapter = adapter
        if adapter is not None and adapter.in_dim != model.out_dim:
            raise LookalikeError(f"the adapter maps {adapter.in_dim}-d vectors; the model gives {model.out_dim}-d")
        self.space = "" if adapter is None else f"adapter:{adapter.fingerprint()}"

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        cache_dir: str | None = None,
        device: str | None = None,
        adapter: str | Path | None = None,
    ) -> QueryEncoder:
        """`adapter`: an adapter file (`lookalike train-adapter`); every vector is then its output."""
        model, payload = LookalikeModel.load(checkpoint)
        if adapter is None:
            return cls(model, payload, cache_dir, device)
        from lookalike.towers.adapter import load_adapter

        a, _ = load_adapter(adapter)
        if a.in_dim != model.out_dim:
            raise LookalikeError(
                f"adapter {adapter} maps {a.in_dim}-d vectors; checkpoint {checkpoint} gives {model.out_dim}-d"
            )
        return cls(model, payload, cache_dir, device, a)

    def adapted(self, adapter: Adapter | None) -> QueryEncoder:
        """The same model and frozen encoders with another adapter (an experiment's compact variant)."""
        other = QueryEncoder.__new__(QueryEncoder)
        other.__dict__.update(self.__dict__)
        other.adapter, other._bank, other._offsets = adapter, None, {}
        other.space = "" if adapter is None else f"adapter:{adapter.fingerprint()}"
        return other

    @property
    def dim(self) -> int:
        return self.model.out_dim if self.adapter is None else self.adapter.out_dim

    def adapt(self, vectors: np.ndarray) -> np.ndarray:
        """Unit vectors of the model's space → the served space (the adapter's output; themselves without one)."""
        return vectors if self.adapter is None else self.adapter.encode(np.asarray(vectors, np.float32))

    def hub_bias(self, vectors: np.ndarray) -> np.ndarray | None:
        """Score offsets of stored vectors for JSON and text queries: the hubness correction evaluation and
        `lookalike search` rank with (None when the checkpoint has it off or carries no training queries).

        An offset depends on the vector alone, so each is computed once and remembered by the vector's
        digest: 200 new candidates cost 165 ms on one thread against fashion-products' 27,747-query bank
        (benchmarks/core.py), known ones nothing."""
        if not self.model.config.retrieval.hubness_weight or self.model.query_bank is None:
            return None
        if self._bank is None:
            bank = self.model.query_bank_vectors()
            self._bank = bank if bank is None or self.adapter is None else self.adapter.encode(unit(bank))
        vectors = np.ascontiguousarray(vectors, np.float32)
        keys = [hashlib.sha1(v.tobytes()).digest() for v in vectors]
        missing = [i for i, key in enumerate(keys) if key not in self._offsets]
        if missing:
            offsets = self.model.gallery_bias(vectors[missing], self._bank)
            assert offsets is not None  # the correction is on and there is a bank (checked above)
            for i, o in zip(missing, offsets):
                self._offsets[keys[i]] = float(o)
        return np.array([self._offsets[key] for key in keys], np.float32)

    def _record(self, v: np.ndarray) -> np.ndarray:
        self.last_norms = [*self.last_norms[-999:], *np.linalg.norm(v, axis=1).tolist()]
        return unit(v)

    def images(self, images: list[Image.Image]) -> np.ndarray:
        if self._image is None:
            from lookalike.encoders.embedding import image_encoder

            self._image = image_encoder(self.cfg)
        return self.adapt(unit(self.model.space.transform(self._image.encode_images(images))))

    def image(self, image: str | Path | bytes | Image.Image) -> np.ndarray:
        """The vector of one image: a file, its bytes or a PIL image, decoded as the service decodes an upload."""
        if isinstance(image, (str, Path)):
            try:
                data = Path(image).read_bytes()
            except FileNotFoundError:
                raise LookalikeError(f"image not found: {image}") from None
            except OSError as e:
                raise LookalikeError(f"cannot read image {image}: {e}") from None
            image = decode_image(data, f"image {image}")
        elif isinstance(image, bytes):
            image = decode_image(image, "image")
        else:
            image = image.convert("RGB")
        return self.images([image])[0]

    def features(self, features: np.ndarray) -> np.ndarray:
        """Frozen backbone features (e.g. from the embedding cache) → the served space."""
        return self.adapt(unit(self.model.space.transform(features)))

    def attributes(self, attributes: dict) -> tuple[np.ndarray, dict[str, list[str]], list[str]]:
        """Vector of an attribute JSON query, the values the model never saw (searched as unknown), and
        the fields it ignored (see `query_attributes`)."""
        query, ignored = query_attributes(attributes, self.model.vocab.fields)
        vector = self.adapt(self._record(self.model.encode_attributes([query])))[0]
        return vector, self.model.vocab.unknown_values(query), ignored

    def text(self, text: str) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise LookalikeError("text query is empty")
        if self._text is None:
            from lookalike.encoders.registry import create_text_encoder

            self._text = create_text_encoder(self.cfg.encoder.text_model)
        return self.adapt(self._record(self.model.encode_sentence_vectors(self._text.encode([text]))))[0]


def query_attributes(attributes: dict, fields: list[str]) -> tuple[dict, list[str]]:
    """The part of a JSON query the towers use, and the fields left out, so a product's own JSON (with
    year, is_new, name …) is a valid query. Fields the towers do not use are ignored whatever their value,
    as are nulls; a number in a used field means its text, as when the product was stored (2017 → "2017")."""
    if not isinstance(attributes, dict) or not attributes:
        raise LookalikeError("an attribute query must be a non-empty JSON object of field → value(s)")
    used, query, ignored = set(fields), {}, []
    for f, v in attributes.items():
        if f not in used or v is None:
            ignored.append(f)
        elif isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            query[f] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            query[f] = str(v)
        else:
            raise LookalikeError(f"attribute {f!r} must be a string, a number or a list of strings, got {v!r}")
    if not query:
        raise LookalikeError(
            f"attribute query has no known field; got {sorted(attributes)}, expected some of {sorted(used)}"
        )
    return query, sorted(ignored)


def decode_image(data: bytes, what: str = "upload") -> Image.Image:
    """A fully decoded RGB image, or a LookalikeError naming what is wrong with it."""
    if not data:
        raise LookalikeError(f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise LookalikeError(f"{what} is not a readable image: {e}") from None


def load_model(checkpoint: str | Path, cache_dir: str | None = None, device: str | None = None) -> QueryEncoder:
    """A trained checkpoint, ready to encode attribute JSON, text and images (`lookalike.load_model`)."""
    return QueryEncoder.load(checkpoint, cache_dir, device)
