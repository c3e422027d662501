"""`lookalike tune --engine ray`: the study's trials on a Ray cluster through Ray Tune, proposed by Optuna's TPE
(OptunaSearch, the same define-by-run space) and stopped early by ASHA on each epoch's validation metric.

Ray Tune keeps its own experiment state in `DIR/ray/NAME`. An interrupted run (Ctrl+C: Ray Tune saves its state
and `tune` stops with an error saying so) continues from there with `Tuner.restore` when run again: its finished
trials are kept, its unfinished ones run again, the rest are drawn (the first run's --trials stays). When the run
ends, its trials are written into the Optuna study `DIR/study.db` (complete, or pruned when ASHA stopped them before
their planned epochs) so that the report, the plots and the after-study protocol are the local engine's own.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookalike.config import RunConfig
from lookalike.errors import LookalikeError
from lookalike.pipeline import Prepared
from lookalike.studies.tune import (
    SearchSpace,
    Trainer,
    TuneOptions,
    default_point,
    max_planned_epochs,
    open_study,
    suggest,
)

logger = logging.getLogger(__name__)


def _trainable(
    config: dict, prep: Prepared, base: RunConfig, space: SearchSpace, out: str, max_epochs: int | None
) -> None:
    """One Ray Tune trial: train the config, report every epoch's validation value (ASHA may stop it there)."""
    from ray import tune

    trainer = Trainer(base, space, prep, Path(out), max_epochs)
    trial_dir = Path(out) / "trials" / f"ray-{tune.get_context().get_trial_id()}"
    best, best_epoch = -math.inf, 0

    def report(epoch: int, value: float) -> None:
        nonlocal best, best_epoch
        if value > best:
            best, best_epoch = value, epoch
        # since_best: how the record tells a trial that stopped early on its own from one ASHA stopped
        tune.report({"val": value, "val_best": best, "epoch": epoch, "since_best": epoch - best_epoch})

    trainer.run(dict(config), trial_dir, report)


@dataclass
class DefineByRun:
    """OptunaSearch's define-by-run space (a picklable callable: Ray Tune saves its searcher's state)."""

    space: SearchSpace
    base: RunConfig

    def __call__(self, trial) -> None:
        suggest(trial, self.space, self.base)


def distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions of the space's parameters (what a trial written into the study declares)."""
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for name, p in space.parameters.items():
        if p.type == "categorical":
            out[name] = d.CategoricalDistribution(p.choices)  # type: ignore[arg-type]
        elif p.type == "int":
            out[name] = d.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
        else:
            out[name] = d.FloatDistribution(p.low, p.high, step=p.step, log=p.log)  # type: ignore[arg-type]
    return out


def run_ray(base: RunConfig, space: SearchSpace, opts: TuneOptions, out: Path, trainer: Trainer):
    """Run (or continue) the trials on Ray Tune; returns the Optuna study holding them and the sampler's seed."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from lookalike.distributed.ray_engine import connect

    if opts.storage:
        raise LookalikeError("--engine ray keeps its study in DIR/study.db: leave --storage out")
    connected = connect(opts.address)
    seed = base.train.seed if opts.sampler_seed is None else opts.sampler_seed
    max_epochs = opts.max_epochs or max_planned_epochs(base, space)
    out = out.resolve()
    searcher = OptunaSearch(
        space=DefineByRun(space, base),
        points_to_evaluate=[default_point(base, space)] if default_point(base, space) else None,
        metric="val_best",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, opts.trials // 4))),
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, prep=trainer.prep, base=base, space=space, out=str(out), max_epochs=max_epochs
        ),
        {"cpu": 1},
    )
    experiment = out / "ray" / opts.study_name
    try:
        if tune.Tuner.can_restore(str(experiment)):
            logger.info(f"continuing the Ray Tune experiment in {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=ASHAScheduler(
                        time_attr="training_iteration", max_t=max_epochs, grace_period=1, reduction_factor=3
                    ),
                    metric="val_best",
                    mode="max",
                    num_samples=opts.trials,
                    max_concurrent_trials=opts.jobs,
                    time_budget_s=opts.timeout,
                    reuse_actors=True,  # a trial's process is started once, not per trial (torch's import)
                ),
                run_config=tune.RunConfig(name=opts.study_name, storage_path=str(out / "ray"), verbose=0),
            )
        t0 = time.monotonic()
        results = tuner.fit()
        fit_s = time.monotonic() - t0
    finally:
        if connected:
            import ray

            ray.shutdown()
    # Interrupted (Ctrl+C, SIGINT): Ray Tune saved its state and returned, with trials unfinished or not yet drawn
    # (fewer than asked, before the time budget ran out). The study is not over: no report from half a run.
    unfinished = len(results) - results.num_terminated - results.num_errors
    if unfinished or (len(results) < opts.trials and (opts.timeout is None or fit_s < opts.timeout)):
        raise LookalikeError(
            f"the Ray Tune run was interrupted after {results.num_terminated + results.num_errors} of {opts.trials} "
            f"trials; its state is in {experiment}: run the same command again to continue it (finished trials are "
            "not run again)"
        )
    return record(results, base, space, opts, out, trainer), seed


def record(results, base: RunConfig, space: SearchSpace, opts: TuneOptions, out: Path, trainer: Trainer):
    """Ray Tune's trials as trials of the Optuna study `opts.study_name` in DIR/study.db (written anew)."""
    import optuna

    url = f"sqlite:///{out / 'study.db'}"
    if opts.study_name in optuna.get_all_study_names(url):
        optuna.delete_study(study_name=opts.study_name, storage=url)
    study, _ = open_study(base, space, opts.model_copy(update={"storage": None}), out, first_default=False)
    dists = distributions(space)
    for r in sorted(results, key=lambda r: (r.metrics or {}).get("trial_id", "")):  # the order Ray made them
        ray_id = (r.metrics or {}).get("trial_id")
        params = {k: v for k, v in (r.config or {}).items() if k in dists}
        cfg, overrides = trainer.config(params, out / "trials")
        frame = r.metrics_dataframe
        values = (
            {int(e): float(v) for e, v in zip(frame["epoch"], frame["val"])}
            if frame is not None and "val" in frame
            else {}
        )
        if r.error is not None or not values:
            state = optuna.trial.TrialState.FAIL
        elif len(values) >= cfg.train.epochs or r.metrics.get("since_best", 0) >= cfg.train.patience:
            state = optuna.trial.TrialState.COMPLETE  # it ran its epochs, or stopped early on its own
        else:
            state = optuna.trial.TrialState.PRUNED  # ASHA stopped it
        study.add_trial(
            optuna.create_trial(
                state=state,
                value=max(values.values()) if state == optuna.trial.TrialState.COMPLETE else None,
                params=params,
                distributions={k: dists[k] for k in params},
                intermediate_values=values,
                user_attrs={
                    "config": {k: v for k, v in overrides.items() if k != "out_dir"},
                    "epochs_planned": cfg.train.epochs,
                    "epochs_run": len(values),
                    "best_epoch": max(values, key=values.__getitem__) if values else None,
                    "seconds": round(float(r.metrics.get("time_total_s", 0.0)), 2) if r.metrics else None,
                    "validated_on": {"split": "val", "products": len(trainer.prep.idx["val"])},
                    "ray_trial": Path(r.path).name if r.path else None,
                    **({"trial_dir": str(out / "trials" / f"ray-{ray_id}")} if ray_id else {}),
                    **({"error": str(r.error).splitlines()[0]} if r.error is not None else {}),
                },
            )
        )
    return study
