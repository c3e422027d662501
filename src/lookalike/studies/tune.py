"""`lookalike tune`: hyperparameter search on Optuna (seeded TPE, a pruner fed every epoch's validation metric),
with an honest protocol.

- Trials train on the training split and are scored on the validation split only, ranked as users get it: with
  the hubness correction, its bank being the trial's own training queries (`train.val_corrected`).
- The test split is evaluated after the study, once for the base ("default") config and once for the best
  config (retrained in `DIR/final`, every artifact `train` writes); then both are retrained over more seeds and
  compared with a paired test, so a gain that is noise or a proxy's does not pass as real.
- The study lives in `DIR/study.db` (or `--storage`, e.g. PostgreSQL shared by several processes). Trials beat a
  heartbeat: a trial whose process died is failed by the next process to look and retried, resuming from its
  last epoch; a finished trial is never run again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lookalike.config import SHIPPED_CONFIGS, RunConfig, with_overrides
from lookalike.errors import LookalikeError
from lookalike.evaluation.evaluator import get_metric
from lookalike.pipeline import Prepared, new_model, prepare, run_main
from lookalike.provenance import provenance
from lookalike.training.tracking import Tracker
from lookalike.training.trainer import train

logger = logging.getLogger(__name__)

DEFAULT_SPACE = SHIPPED_CONFIGS / "tune-space.json"
# What a trial may not change: the data it sees and how it is split and scored (one preparation serves every
# trial, and a trial that changed its validation would not be comparable), and its seed.
NOT_TUNABLE = ("out_dir", "quick", "data.", "encoder.", "split.", "eval.", "train.val_metric", "train.val_corrected")
# Choices a space file can take from a registry, so that what a registry gains joins the search by itself.
REGISTRIES = {"@towers": "lookalike.towers.registry:TRAINABLE_TOWERS"}
# The test figures a tuning report puts side by side (json → image, per relevance definition).
FIGURE_METRICS = ("hit@10", "hit@5", "precision@10", "ndcg@10", "mrr")


class ParamSpec(BaseModel):
    """One dimension of the search space (a dotted run-config key)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | str | None = None
    when: dict[str, list[Any]] = Field(default_factory=dict, description="draw only when these keys hold a value")

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError("an int or float parameter needs 'low' <= 'high'")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scaled parameter needs 'low' > 0")
        return self


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    parameters: dict[str, ParamSpec]


def load_space(path: str | Path | None) -> SearchSpace:
    """The search space in `path` (default: the packaged configs/tune-space.json), with registry choices
    resolved; a bad file or parameter is one error naming it."""
    path = Path(path) if path else DEFAULT_SPACE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LookalikeError(f"search space file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise LookalikeError(f"search space {path} is not valid JSON: {e}") from None
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise LookalikeError(f"search space {path}: {where}: {err['msg']}") from None
    seen: list[str] = []
    defaults = RunConfig().model_dump(mode="json", by_alias=True)
    for name, p in space.parameters.items():
        if name.startswith(NOT_TUNABLE) or name == "train.seed":
            raise LookalikeError(f"search space {path}: {name} is not tunable (the data, split, scoring and seed stay)")
        try:  # the key must name a config field
            _get(defaults, name)
        except KeyError:
            raise LookalikeError(f"search space {path}: {name} is not a run-config key") from None
        if isinstance(p.choices, str):
            if p.choices not in REGISTRIES:
                raise LookalikeError(
                    f"search space {path}: {name}: unknown registry {p.choices!r}; known {list(REGISTRIES)}"
                )
            p.choices = registry_names(p.choices)
        late = [k for k in p.when if k in space.parameters and k not in seen]
        if late:
            raise LookalikeError(f"search space {path}: {name} depends on {late}, which must come before it")
        seen.append(name)
    return space


def registry_names(token: str) -> list[str]:
    import importlib

    module, attr = REGISTRIES[token].split(":")
    return sorted(getattr(importlib.import_module(module), attr))


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


class TuneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = "runs/tune"
    space: str | None = None
    trials: int = Field(20, ge=1, description="finished trials (complete or pruned) the study should hold")
    timeout: float | None = Field(None, gt=0)
    max_epochs: int | None = Field(None, ge=1)
    jobs: int = Field(1, ge=1)
    storage: str | None = None
    study_name: str = "lookalike-tune"
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    seeds: int = Field(3, ge=1, description="seeds of the default-vs-best comparison on test")
    sampler_seed: int | None = None
    heartbeat: int = Field(60, ge=1, description="seconds between a running trial's heartbeats")
    final: bool = True
    ensemble: int = Field(0, ge=0, description="after the study, average the K best complete trials (0: none)")

    @model_validator(mode="after")
    def _ensemble_size(self) -> TuneOptions:
        if self.ensemble == 1:
            raise ValueError("an ensemble averages at least 2 trials (0: none)")
        return self


def protocol_config(cfg: RunConfig) -> RunConfig:
    """The base config as every trial and the default run train it: validated by the corrected ranking."""
    cfg = cfg.apply_quick()
    return cfg.model_copy(update={"quick": False, "train": cfg.train.model_copy(update={"val_corrected": True})})


def fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def storage_url(opts: TuneOptions, out: Path) -> str:
    url = opts.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg2  # noqa: F401  SQLAlchemy's default PostgreSQL driver
        except ImportError:  # psycopg 3 (the service extra's driver) under its SQLAlchemy name
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_study(base: RunConfig, space: SearchSpace, opts: TuneOptions, out: Path, first_default: bool = True):
    """The study (created, or loaded to continue it), checked to be the one this space and config started.
    `first_default`: a new study's first trial is the base config."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = storage_url(opts, out)
    for attempt in range(3):  # processes starting together race to create the schema: the loser tries again
        try:
            storage = RDBStorage(
                url,
                heartbeat_interval=opts.heartbeat,
                grace_period=2 * opts.heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=2, inherit_intermediate_values=True
                ),
            )
            break
        except Exception as e:  # a wrong URL, an unreachable server, a missing driver
            if attempt == 2 or "://" not in url or isinstance(e, ImportError | ValueError):
                where = opts.storage or url
                raise LookalikeError(f"cannot open the study storage {where}: {e}".splitlines()[0]) from None
            time.sleep(1 + attempt)
    seed = base.train.seed if opts.sampler_seed is None else opts.sampler_seed
    if opts.storage and opts.sampler_seed is None:
        # Processes sharing a study must not propose the same points: each mixes its pid into the seed.
        seed = seed * 1_000_003 + os.getpid()
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(2, min(10, opts.trials // 4)), constant_liar=True
    )
    max_epochs = opts.max_epochs or max_planned_epochs(base, space)
    pruner: optuna.pruners.BasePruner = {
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "none": optuna.pruners.NopPruner,
    }[opts.pruner]()
    try:
        study = optuna.create_study(
            study_name=opts.study_name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize"
        )
        defaults = default_point(base, space) if first_default else {}
        if defaults:  # the base config is the first trial: the best is never one the study did not compare with it
            study.enqueue_trial(defaults, user_attrs={"base_config": True})
    except optuna.exceptions.DuplicatedStudyError:  # continued, or made by another process sharing the storage
        study = optuna.load_study(study_name=opts.study_name, storage=storage, sampler=sampler, pruner=pruner)
    identity = {
        "space": fingerprint(space.model_dump()),
        "base_config": fingerprint(_study_identity(base)),
        "max_epochs": max_epochs,
        "metric": base.train.val_metric,
    }
    held = study.user_attrs.get("identity")
    if held is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("space", space.model_dump())
        study.set_user_attr("base_config", base.model_dump(mode="json", by_alias=True))
    elif held != identity:
        raise LookalikeError(
            f"study {opts.study_name!r} in {opts.storage or url} was started with another "
            f"{', '.join(k for k in identity if held.get(k) != identity[k])}; give another --study-name or --out"
        )
    logger.info(f"study {opts.study_name!r} in {opts.storage or url}: sampler seed {seed}, pruner {opts.pruner}")
    return study, seed


def _study_identity(base: RunConfig) -> dict:
    """What makes two base configs the same study: everything but where outputs and caches go."""
    d = base.model_dump(mode="json", by_alias=True)
    d.pop("out_dir")
    d["encoder"].pop("cache_dir")
    d["data"].pop("catalog")
    return d


def max_planned_epochs(base: RunConfig, space: SearchSpace) -> int:
    p = space.parameters.get("train.epochs")
    return int(p.high if p and p.type == "int" else max(p.choices) if p and p.choices else base.train.epochs)  # type: ignore[arg-type]


def default_point(base: RunConfig, space: SearchSpace) -> dict[str, Any]:
    """The base config's values of the space's parameters (those it draws, and that lie inside their range)."""
    tree = base.model_dump(mode="json", by_alias=True)
    point: dict[str, Any] = {}
    for name, p in space.parameters.items():
        if any((point[k] if k in point else _get(tree, k)) not in values for k, values in p.when.items()):
            continue
        v = _get(tree, name)
        if p.type == "categorical":
            inside = v in (p.choices or [])
        else:
            inside = isinstance(v, int | float) and p.low <= v <= p.high  # type: ignore[operator]
            inside = inside and (not p.step or abs((v - p.low) / p.step - round((v - p.low) / p.step)) < 1e-9)  # type: ignore[operator]
        if inside:
            point[name] = v
    return point


def suggest(trial, space: SearchSpace, base: RunConfig) -> dict[str, Any]:
    """Draw one point of `space` (define-by-run: a parameter whose `when` does not hold is not drawn)."""
    tree = base.model_dump(mode="json", by_alias=True)
    params: dict[str, Any] = {}
    for name, p in space.parameters.items():
        if any((params[k] if k in params else _get(tree, k)) not in values for k, values in p.when.items()):
            continue
        if p.type == "categorical":
            params[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)  # type: ignore[arg-type]
    return params


@dataclass
class Trainer:
    """Trains one trial's config on the shared preparation; reports each epoch's validation value."""

    base: RunConfig
    space: SearchSpace
    prep: Prepared
    out: Path
    max_epochs: int | None

    def config(self, params: dict[str, Any], trial_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
        overrides = dict(params)
        epochs = int(overrides.get("train.epochs", self.base.train.epochs))
        if self.max_epochs:
            epochs = min(epochs, self.max_epochs)
        overrides["train.epochs"] = epochs
        overrides["out_dir"] = str(trial_dir)
        return with_overrides(self.base, overrides), overrides

    def run(
        self, params: dict[str, Any], trial_dir: Path, report: Callable[[int, float], None], resume: bool = False
    ) -> tuple[list[dict], RunConfig]:
        from lookalike.evaluation.evaluate import validator

        cfg, _ = self.config(params, trial_dir)
        model = new_model(cfg, self.prep)
        # Every trial is tracked as `train` tracks a run (TensorBoard in trial_dir/tb, MLflow with --mlflow): each
        # epoch goes to the tracker first, then to the pruner, which may stop the trial there.
        tracker = Tracker(cfg, trial_dir / "tb", cfg.tracking.mlflow_uri, run_name=f"trial-{trial_dir.name}")

        def on_epoch(row: dict) -> None:
            tracker.epoch(row)
            report(row["epoch"], row["val_metric"])

        history: list[dict] = []
        try:
            history = train(
                model,
                self.prep.data,
                validator(self.prep.emb, self.prep.idx["val"], cfg),
                cfg.train,
                trial_dir / "checkpoints",
                resume=resume,
                progress=False,
                val_data=self.prep.val,
                on_epoch=on_epoch,
            )
            best = max(history, key=lambda r: r["val_metric"])
            tracker.finish({"best_val_metric": best["val_metric"], "best_epoch": best["epoch"]})
        finally:  # pruned, stopped or failed: what it logged stays, its MLflow run marked failed
            tracker.close(failed=not history)
        return history, cfg


def objective(trainer: Trainer) -> Callable:
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    def run_trial(trial: optuna.Trial) -> float:
        params = suggest(trial, trainer.space, trainer.base)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)  # a retry of a dead process's trial
        trial_dir = trial_folder(frozen, trainer.out)
        try:
            cfg, overrides = trainer.config(params, trial_dir)
        except LookalikeError as e:
            trial.set_user_attr("error", str(e))
            raise
        resume = origin is not None and (trial_dir / "checkpoints" / "last.pt").exists()
        trial.set_user_attr("epochs_planned", cfg.train.epochs)
        trial.set_user_attr("config", {k: v for k, v in overrides.items() if k != "out_dir"})
        trial.set_user_attr("validated_on", {"split": "val", "products": len(trainer.prep.idx["val"])})
        if resume:
            trial.set_user_attr("resumed_from_trial", origin)
        t0 = time.perf_counter()
        epochs_run = 0

        def report(epoch: int, value: float) -> None:
            nonlocal epochs_run
            epochs_run = epoch
            trial.report(value, epoch)
            trial.set_user_attr("epochs_run", epoch)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: {value:.4f}")

        try:
            history, _ = trainer.run(params, trial_dir, report, resume)
        except optuna.TrialPruned:
            (trial_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
            raise
        except LookalikeError as e:  # counted as finished: the same config would fail again
            trial.set_user_attr("error", str(e))
            raise
        with warnings.catch_warnings():  # Optuna ignores, with a warning, an epoch reported before
            warnings.simplefilter("ignore")
            for row in history:  # epochs a killed process validated but did not get to report
                trial.report(row["val_metric"], row["epoch"])
        best = max(history, key=lambda r: r["val_metric"])
        trial.set_user_attr("epochs_run", len(history))
        trial.set_user_attr("best_epoch", best["epoch"])
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        (trial_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)  # the optimiser's state: only a retry needs it
        return float(best["val_metric"])

    return run_trial


def trial_folder(trial, out: Path) -> Path:
    """Where a trial trained: `DIR/trials/NNNN`, the folder of the trial a retry resumes (a retry of a dead
    process's trial trains in its folder), or the folder a Ray trial named (`trial_dir`)."""
    if "trial_dir" in trial.user_attrs:
        return Path(trial.user_attrs["trial_dir"])
    origin = trial.system_attrs.get("failed_trial")  # RetryHeartbeatStaleTrialCallback.retried_trial_number's source
    return out / "trials" / f"{origin if origin is not None else trial.number:04d}"


def finished(study) -> int:
    """Trials that count towards --trials: complete, pruned, or failed on their own config (not on a kill)."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def run_study(study, trainer: Trainer, opts: TuneOptions) -> None:
    """Run trials until the study holds `opts.trials` finished ones (whoever ran them) or the timeout."""
    import optuna

    def enough(study: optuna.Study, _trial) -> None:
        if finished(study) >= opts.trials:
            study.stop()

    if finished(study) >= opts.trials:
        logger.info(f"the study already holds {finished(study)} finished trials (--trials {opts.trials}): none to run")
        return
    study.optimize(
        objective(trainer),
        timeout=opts.timeout,
        n_jobs=opts.jobs,
        catch=(LookalikeError,),
        callbacks=[enough],
        gc_after_trial=False,
        show_progress_bar=False,
    )


def trial_records(study) -> list[dict]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "config": t.user_attrs.get("config"),
                "validation": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "value": t.value if t.state == TrialState.COMPLETE else None,
                "epochs_planned": t.user_attrs.get("epochs_planned"),
                "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
                "best_epoch": t.user_attrs.get("best_epoch"),
                "seconds": seconds,
                "validated_on": t.user_attrs.get("validated_on"),
                **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
                **(
                    {"retry_of": t.system_attrs["failed_trial"], "resumed": "resumed_from_trial" in t.user_attrs}
                    if "failed_trial" in t.system_attrs
                    else {}
                ),
            }
        )
    return rows


def budget(records: list[dict]) -> dict:
    """Trials by state, and the epochs pruning and early stopping saved (of the epochs the trials planned)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    done = [r for r in records if r["state"] in ("complete", "pruned") and r["epochs_planned"]]
    planned = sum(r["epochs_planned"] for r in done)
    run = sum(r["epochs_run"] for r in done)
    pruned = sum(r["epochs_planned"] - r["epochs_run"] for r in done if r["state"] == "pruned")
    stopped = sum(r["epochs_planned"] - r["epochs_run"] for r in done if r["state"] == "complete")
    return {
        "trials": len(records),
        **{f"{s}": counts.get(s, 0) for s in ("complete", "pruned", "fail", "running", "waiting")},
        "epochs_planned": planned,
        "epochs_run": run,
        "epochs_saved_by_pruning": pruned,
        "epochs_saved_by_pruning_share": round(pruned / planned, 4) if planned else 0.0,
        "epochs_saved_by_early_stopping": stopped,
        "trial_seconds": round(sum(r["seconds"] or 0 for r in records), 2),
    }


def study_time(study, records: list[dict], engine: str) -> dict[str, float | None]:
    """The study's time over every process that ran it: its trials' seconds summed (the compute spent, killed and
    retried attempts included) and, on the local engine, the span from the first trial's start to the last one's
    end (Ray's trials are written into the study at its end: their span is not theirs)."""
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    span = round((max(ends) - min(starts)).total_seconds(), 2) if starts and ends and engine == "local" else None
    return {"trial_seconds": round(sum(r["seconds"] or 0 for r in records), 2), "span_seconds": span}


def figures(evaluation: dict) -> dict[str, float]:
    """JSON → image figures on test, per relevance definition: hit@10, hit@5, P@10, nDCG@10, MRR, anchor hit@10."""
    out: dict[str, float] = {}
    block = evaluation.get("json_to_image", {})
    for name, res in block.items():
        if not (isinstance(res, dict) and "all" in res):
            continue
        for m in FIGURE_METRICS:
            if m in res["all"]:
                out[f"json_to_image/{name}/{m}"] = round(get_metric(evaluation, f"json_to_image/{name}/{m}"), 4)
        if "anchor" in res and "hit@10" in res["anchor"]:
            out[f"json_to_image/{name}/anchor/hit@10"] = round(float(res["anchor"]["hit@10"]), 4)
    return out


def _run(cfg: RunConfig, prep: Prepared, progress: bool) -> dict:
    """Train `cfg` and evaluate it on test (run_main: every artifact `train` writes); validation and test figures."""
    s = run_main(cfg, progress=progress, prep=prep)
    results = json.loads(Path(s["training_results"]).read_text(encoding="utf-8"))
    evaluation = json.loads(Path(s["evaluation"]).read_text(encoding="utf-8"))
    return {
        "out_dir": s["out_dir"],
        "seed": cfg.train.seed,
        "best_epoch": results["best_epoch"],
        "validation": results["best_val_metric"],
        "test": figures(evaluation),
    }


def paired(default: list[dict], best: list[dict]) -> dict:
    """Per test figure: the seeds' values, the mean difference best − default and a paired t-test over seeds."""
    from scipy.stats import ttest_rel

    out = {}
    for key in default[0]["test"]:
        a = np.array([r["test"][key] for r in default])
        b = np.array([r["test"][key] for r in best])
        entry: dict[str, Any] = {
            "default": a.tolist(),
            "best": b.tolist(),
            "mean_diff": round(float((b - a).mean()), 4),
        }
        if len(a) >= 2 and np.ptp(b - a) > 0:
            t = ttest_rel(b, a)
            entry.update({"t": round(float(t.statistic), 4), "p": float(t.pvalue)})
        else:
            entry.update({"t": None, "p": None})
        out[key] = entry
    return out


def study_ensemble(study, k: int, base: RunConfig, prep: Prepared, out: Path, test: bool) -> dict:
    """The `k` best complete trials (by validation) averaged into `DIR/ensemble.pt` (`build_ensemble`: their
    unit query vectors; they share the study's image space and vocabulary), validated as the trials were and,
    with `test`, evaluated once on the test split with the corrected ranking the default and best runs get.
    Fewer than `k` trials with a checkpoint: those there are, said so; fewer than 2: not built, with the reason."""
    from optuna.trial import TrialState

    from lookalike.evaluation.evaluate import evaluate_split, validator
    from lookalike.model import build_ensemble

    ranked = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: (-(t.value or 0.0), t.number)
    )
    members: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for t in ranked:
        if len(members) == k:
            break
        checkpoint = trial_folder(t, out) / "checkpoints" / "best_model.pt"
        (members if checkpoint.is_file() else missing).append(
            {"trial": t.number, "validation": t.value, "checkpoint": str(checkpoint)}
        )
    entry: dict[str, Any] = {"asked": k, "members": members}
    if missing:
        entry["missing_checkpoints"] = missing
    if len(members) < k:
        entry["note"] = (
            f"{len(members)} of the {k} trials asked for: the study holds {len(ranked)} complete trial(s)"
            + (f", {len(missing)} of them without a checkpoint" if missing else "")
        )
        logger.warning(f"ensemble: {entry['note']}")
    if len(members) < 2:
        return {**entry, "built": False, "reason": f"an ensemble needs 2 trials; {entry['note']}"}
    model, extra = build_ensemble([m["checkpoint"] for m in members])
    extra.update({"schema": prep.emb.catalogue.schema.model_dump(mode="json"), "split_sizes": prep.sizes})
    model.save(out / "ensemble.pt", **extra)
    validation = get_metric(validator(prep.emb, prep.idx["val"], base)(model), base.train.val_metric)
    entry.update(
        {
            "built": True,
            "checkpoint": str(out / "ensemble.pt"),
            "validation": validation,
            "validation_note": "its members were chosen on validation: optimistic, as the best trial's figure",
        }
    )
    trials = [m["trial"] for m in members]
    logger.info(f"ensemble of trials {trials}: validation {validation:.4f} → {out / 'ensemble.pt'}")
    if test:
        results = out / "ensemble"
        evaluation = evaluate_split(model, prep.emb, prep.idx["test"], base, results / "runs")
        evaluation.update({"split": "test", "checkpoint": str(out / "ensemble.pt"), **provenance()})
        (results / "evaluation.json").write_text(json.dumps(evaluation, indent=2, ensure_ascii=False), encoding="utf-8")
        entry.update({"test": figures(evaluation), "evaluation": str(results / "evaluation.json")})
    else:
        entry["test"] = None
        entry["test_note"] = "not evaluated: --no-final (the test split waits for the after-study protocol)"
    return entry


def write_plots(study, out: Path) -> dict[str, str]:
    """Optuna's matplotlib views of the study; a view the study cannot draw yet is left out, with the reason."""
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    from lookalike.evaluation.plots import plt

    out.mkdir(parents=True, exist_ok=True)
    views: dict[str, Callable[..., Any]] = {
        "history": vis.plot_optimization_history,
        "importances": vis.plot_param_importances,
        "parallel_coordinates": vis.plot_parallel_coordinate,
        "intermediate_values": vis.plot_intermediate_values,
    }
    # One slice per parameter: optuna draws them all in one row, unreadable beyond a few parameters.
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for name in sorted({k for t in complete for k in t.params}):  # what a slice can show: complete trials
        views[f"slice_{name}"] = functools.partial(vis.plot_slice, params=[name])
    written: dict[str, str] = {}
    for name, view in views.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = view(study)
            fig = np.atleast_1d(ax).flat[0].figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=100)
            plt.close(fig)
            written[name] = str(out / f"{name}.png")
        except Exception as e:  # e.g. importances need two complete trials with varied parameters
            logger.warning(f"plot {name} not drawn: {e}")
            written[name] = f"not drawn: {e}"
    return written


def tune(cfg: RunConfig, opts: TuneOptions, progress: bool = True) -> dict:
    """Run (or continue) the study, then the after-study protocol; writes best_config.json, tuning_report.json,
    plots/ and final/ under `opts.out`; returns the report."""
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(opts.space)
    base = protocol_config(cfg).model_copy(update={"out_dir": str(out / "default")})
    t0 = time.perf_counter()
    prep = prepare(base, progress)
    trainer = Trainer(base, space, prep, out, opts.max_epochs)
    if opts.engine == "ray":
        from lookalike.studies.tune_ray import run_ray

        study, sampler_seed = run_ray(base, space, opts, out, trainer)
    else:
        study, sampler_seed = open_study(base, space, opts, out)
        run_study(study, trainer, opts)
    study_s = time.perf_counter() - t0
    records = trial_records(study)
    complete = [r for r in records if r["state"] == "complete"]
    if not complete:
        raise LookalikeError(f"no trial of study {opts.study_name!r} completed; see {out / 'tuning_report.json'}")
    best_trial = study.best_trial
    report: dict[str, Any] = {
        **provenance(),
        "study": {
            "name": opts.study_name,
            "storage": opts.storage or str(out / "study.db"),
            "engine": opts.engine,
            "sampler": "TPE",
            "sampler_seed": sampler_seed,
            "pruner": opts.pruner,
            "metric": f"validation {base.train.val_metric}, hubness-corrected (bank: each trial's training queries)",
            "space": space.model_dump(),
            "options": opts.model_dump(),
            # This process's share (preparation included): a resumed study's second process may run no trial.
            "seconds": round(study_s, 2),
            **study_time(study, records, opts.engine),
        },
        "base_config": base.model_dump(mode="json", by_alias=True),
        "split": {"seed": base.split.seed, "sizes": prep.sizes},
        "budget": budget(records),
        "trials": records,
        "best_trial": {"number": best_trial.number, "validation": best_trial.value, "params": best_trial.params},
    }
    best_cfg = with_overrides(base, {**best_trial.user_attrs["config"], "out_dir": str(out / "final")})
    best_cfg.save(out / "best_config.json")
    plots = write_plots(study, out / "plots")
    report["plots"] = plots
    if opts.final:
        report.update(after_study(base, best_cfg, best_trial.value, prep, opts, out, progress))
    if opts.ensemble:
        report["ensemble"] = study_ensemble(study, opts.ensemble, base, prep, out, test=opts.final)
    (out / "tuning_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def after_study(
    base: RunConfig,
    best_cfg: RunConfig,
    best_value: float,
    prep: Prepared,
    opts: TuneOptions,
    out: Path,
    progress: bool,
) -> dict:
    """The test split, evaluated once for the default and once for the best config, then over more seeds."""
    logger.info("the study is over: the default and the best config, trained and evaluated on test")
    # The default is a run to compare with, not a deliverable: no sample grids (final/ has them).
    default = _run(with_overrides(base, {"eval.sample_queries": 0}), prep, progress)
    final = _run(best_cfg, prep, progress)
    seeds: dict[str, list[dict]] = {"default": [default], "best": [final]}
    for i in range(1, opts.seeds):
        seed = base.train.seed + i
        for name, c in (("default", base), ("best", best_cfg)):
            run_cfg = with_overrides(
                c, {"train.seed": seed, "eval.sample_queries": 0, "out_dir": str(out / "seeds" / f"{seed}" / name)}
            )
            seeds[name].append(_run(run_cfg, prep, progress))
    return {
        "default": {"validation": default["validation"], "test": default["test"], "out_dir": default["out_dir"]},
        "best": {
            "validation_in_study": best_value,
            "validation_note": "the best of all trials on validation: optimistic, chosen among them",
            "validation": final["validation"],
            "test": final["test"],
            "out_dir": final["out_dir"],
        },
        "seeds": {
            "seeds": [r["seed"] for r in seeds["default"]],
            "runs": seeds,
            "paired": paired(seeds["default"], seeds["best"]) if opts.seeds >= 1 else {},
            "note": "paired t-test over seeds (best − default); with few seeds it has little power",
        },
    }
