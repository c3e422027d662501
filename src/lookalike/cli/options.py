"""Command-line options shared by several commands, and how they become one validated run config.

Any command module (the core commands, the service's, the studies') imports these; nothing here is private.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    from lookalike.config import RunConfig

# The one place that knows where this machine keeps its data sets: the library never does.
DATA_ENV = "LOOKALIKE_DATA"
DATA_FALLBACK = "../shared/data"
CATALOG = "fashion-products"  # the catalogue commands default to, under the data folder
ITEM_BANK = "kmwp/train.csv"  # the item bank `lookalike itembank` defaults to


def default_help(name: str) -> str:
    return f"default ${DATA_ENV}/{name}; ${DATA_ENV} defaults to {DATA_FALLBACK}"


def default_data(name: str, flag: str) -> str:
    """The path of data set `name` under $LOOKALIKE_DATA (else ../shared/data), for a command whose `flag`
    was not given; when it is not there, the error says which flag to give."""
    root = os.environ.get(DATA_ENV) or DATA_FALLBACK
    path = Path(root) / name
    if not path.exists():
        raise LookalikeError(
            f"{flag} not given and the default {path} does not exist: give {flag} PATH "
            f"(or set {DATA_ENV} to the folder that holds {name})"
        )
    return str(path)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options every command that trains or embeds a catalogue shares (see `run_config`)."""
    p.add_argument(
        "--config",
        help="JSON run config: a file, or the name of one shipped with lookalike (fashion-products); "
        "flags below override it",
    )
    p.add_argument("--catalog", "--data", dest="catalog", help=f"catalogue directory or file ({default_help(CATALOG)})")
    p.add_argument("--schema", help="JSON schema of a CSV/JSONL catalogue (fields, image column, text column)")
    p.add_argument("--out", help="output directory (default runs/default)")
    p.add_argument("--quick", action="store_true", help="tiny subset and 2 epochs, for demos and tests")
    p.add_argument("--limit", type=int, help="use a stratified random subset of N products")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--temperature", type=float)
    p.add_argument(
        "--learnable-temperature",
        dest="learnable_temperature",
        action="store_true",
        default=None,
        help="learn the temperature, starting from --temperature (the default)",
    )
    p.add_argument(
        "--fixed-temperature", dest="learnable_temperature", action="store_false", help="keep --temperature fixed"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--image-model", help="frozen image encoder (lookalike models; default efficientnet-lite0)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--projection", choices=["none", "center", "pca"], help="frozen projection of the image space")
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/lookalike or $LOOKALIKE_CACHE)")
    add_device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        help="where the towers and the frozen image encoder run: auto (a GPU if torch sees one), cpu, cuda, "
        "cuda:N or mps; a device asked for and missing is an error",
    )


def add_training_options(p: argparse.ArgumentParser) -> None:
    """Options only a command that trains takes."""
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast dtype while training (default fp32)")
    p.add_argument("--mlflow", metavar="URI", help="also log params, per-epoch metrics and artifacts to MLflow")


def run_config(args: argparse.Namespace) -> RunConfig:
    """One validated run config: the --config file, overridden by the flags given."""
    from lookalike.catalogue.loading import read_schema
    from lookalike.config import load_config

    overrides = {
        "data.catalog": args.catalog,
        "out_dir": args.out,
        "quick": args.quick or None,
        "data.limit": args.limit,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.temperature": args.temperature,
        "train.learnable_temperature": args.learnable_temperature,
        "train.seed": args.seed,
        "encoder.image_model": args.image_model,
        "encoder.image_size": args.image_size,
        "encoder.projection": args.projection,
        "encoder.cache_dir": args.cache_dir,
        "encoder.device": args.device,
        "train.device": args.device,
        "train.precision": getattr(args, "precision", None),
        "tracking.mlflow_uri": getattr(args, "mlflow", None),
    }
    if args.schema:
        overrides["data.schema"] = read_schema(Path(args.schema)).model_dump()
    return with_catalog(load_config(args.config, overrides))


def with_catalog(cfg: RunConfig) -> RunConfig:
    """`cfg` with a catalogue: the one it names (--catalog or the config's), else the default data set."""
    if cfg.data.catalog:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"catalog": default_data(CATALOG, "--catalog")})})


def require_checkpoint(path: str) -> None:
    """Checked before the heavy imports, so a mistyped path fails at once."""
    if not Path(path).is_file():
        raise LookalikeError(f"checkpoint not found: {path}")
