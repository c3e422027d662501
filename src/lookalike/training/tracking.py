"""Experiment tracking for a training run: TensorBoard event files in OUT/tb/ always, MLflow when a tracking
URI is given. Both receive the same figures: each epoch's history row (train and validation loss, the
validation metrics, lr, temperature, pos/neg similarity, grad norm), then the run's hyperparameters with its
final metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lookalike.config import RunConfig
from lookalike.errors import LookalikeError

logger = logging.getLogger(__name__)

# History-row keys → scalar tags, grouped the way TensorBoard folds them.
SCALARS = {
    "loss": "loss/train",
    "attribute_loss": "loss/train_attribute",
    "text_loss": "loss/train_text",
    "val_loss": "loss/validation",
    "val_metric": "validation/metric",
    "lr": "optim/lr",
    "grad_norm": "optim/grad_norm",
    "temperature": "optim/temperature",
    "text_temperature": "optim/text_temperature",
    "positive_similarity": "similarity/positive",
    "negative_similarity": "similarity/negative",
}


def flat_config(cfg: RunConfig) -> dict[str, str | int | float | bool]:
    """The run config as dotted scalar parameters (what TensorBoard's hparams and MLflow params take)."""
    out: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(node, bool | int | float | str):
            out[prefix] = node
        else:  # None, lists: their text
            out[prefix] = "none" if node is None else str(node)

    walk("", cfg.model_dump(mode="json", by_alias=True, exclude={"data": {"schema_"}}))
    return out


def epoch_scalars(row: dict) -> dict[str, float]:
    """One history row's figures, by tag (missing or None values are left out)."""
    out = {tag: float(row[k]) for k, tag in SCALARS.items() if row.get(k) is not None}
    out.update({f"validation/{k}": float(v) for k, v in (row.get("val_metrics") or {}).items()})
    return out


class Tracker:
    """Opened by a training run, fed each epoch, closed with the final metrics (`finish`)."""

    def __init__(self, cfg: RunConfig, log_dir: Path, mlflow_uri: str | None = None, run_name: str | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.mlflow: Any = None
        if mlflow_uri:
            try:
                import mlflow
            except ImportError:
                raise LookalikeError(
                    "--mlflow needs the mlflow package: pip install 'lookalike[mlflow]' (or mlflow-skinny)"
                ) from None
            try:
                mlflow.set_tracking_uri(mlflow_uri)
                mlflow.set_experiment(cfg.tracking.mlflow_experiment)
                self.run_id = mlflow.start_run(run_name=run_name).info.run_id
            except Exception as e:  # a refused store (MLflow 3 refuses file stores by default), no server, ...
                self.writer.close()
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise LookalikeError(f"--mlflow {mlflow_uri}: {first}") from None
            mlflow.log_params(flat_config(cfg))
            self.mlflow = mlflow
            logger.info(f"MLflow run {self.run_id} at {mlflow_uri}")

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        scalars = epoch_scalars(row)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({t.replace("@", "_at_"): v for t, v in scalars.items()}, step=step)

    def finish(self, metrics: dict[str, float], artifacts: list[Path] | None = None) -> None:
        """Hyperparameters with the run's final metrics (TensorBoard's HPARAMS tab, MLflow's run table)."""
        from torch.utils.tensorboard.summary import hparams

        final = {f"final/{k}": float(v) for k, v in metrics.items()}
        file_writer = self.writer._get_file_writer()  # the hparams go beside the scalars, not in a new run folder
        for summary in hparams(flat_config(self.cfg), final):
            file_writer.add_summary(summary)
        for k, v in final.items():
            self.writer.add_scalar(k, v)
        self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in final.items()})
            for path in artifacts or []:
                if Path(path).is_file():
                    self.mlflow.log_artifact(str(path))

    def close(self, failed: bool = False) -> None:
        self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.mlflow = None
