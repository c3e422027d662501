"""The tuner's search space file and the schedulers it searches: quick checks, no training."""

from __future__ import annotations

import json

import pytest

from lookalike.config import RunConfig, config_path
from lookalike.errors import LookalikeError
from lookalike.studies.tune import DEFAULT_SPACE, load_space, suggest, with_overrides
from lookalike.towers.registry import ATTRIBUTE_TOWERS, TRAINABLE_TOWERS
from lookalike.training.trainer import lr_factor, warmup_cosine


def test_the_packaged_space_takes_its_towers_from_the_registry():
    space = load_space(None)
    assert (
        space.parameters["tower.name"].choices
        == sorted(TRAINABLE_TOWERS)
        == sorted(set(ATTRIBUTE_TOWERS) - {"ensemble"})
    )
    assert {"residual", "attention"} <= set(space.parameters["tower.name"].choices)
    raw = json.loads(DEFAULT_SPACE.read_text())["parameters"]
    assert list(space.parameters) == list(raw)
    for name in ("train.lr", "train.scheduler", "train.soft_targets", "tower.hidden_dim", "tower.field_dropout"):
        assert name in space.parameters
    with pytest.raises(LookalikeError, match="configs shipped with lookalike: fashion-products") as e:
        config_path("nope")
    assert "tune-space" not in str(e.value)  # the space is not a run config


@pytest.mark.parametrize(
    "param, message",
    [
        ({"data.limit": {"type": "int", "low": 1, "high": 2}}, "data.limit is not tunable"),
        ({"train.seed": {"type": "int", "low": 1, "high": 2}}, "train.seed is not tunable"),
        ({"train.nope": {"type": "float", "low": 0, "high": 1}}, "train.nope is not a run-config key"),
        ({"tower.name": {"type": "categorical", "choices": "@nope"}}, "unknown registry '@nope'"),
        ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log-scaled parameter needs 'low' > 0"),
        ({"train.lr": {"type": "float", "high": 1}}, "needs 'low' <= 'high'"),
        (
            {
                "tower.dropout": {"type": "float", "low": 0, "high": 0.3, "when": {"tower.name": ["mlp"]}},
                "tower.name": {"type": "categorical", "choices": ["mlp"]},
            },
            "depends on \\['tower.name'\\], which must come before it",
        ),
    ],
)
def test_a_bad_space_is_one_error_naming_the_file_and_parameter(tmp_path, param, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"parameters": param}))
    with pytest.raises(LookalikeError, match=message) as e:
        load_space(path)
    assert str(path) in str(e.value)


def test_conditional_parameters_are_drawn_only_when_they_apply():
    import optuna

    space = load_space(None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        params = suggest(study.ask(), space, RunConfig())
        c2f = params["tower.name"] == "coarse-to-fine"
        assert all(("tower.coarse_to_fine." in k) <= c2f for k in params)
        assert c2f == ("tower.coarse_to_fine.heads" in params)
        seen.add(params["tower.name"])
        with_overrides(RunConfig(), params)  # every point drawn is a valid run config
    assert seen == set(TRAINABLE_TOWERS)


def test_schedulers_after_the_warm_up():
    warmup, total = 10, 110
    for name in ("cosine", "step", "exponential", "constant"):
        assert [lr_factor(name, s, warmup, total) for s in range(warmup)] == [
            warmup_cosine(s, warmup, total) for s in range(warmup)
        ]
    assert [lr_factor("cosine", s, warmup, total) for s in range(total)] == [
        warmup_cosine(s, warmup, total) for s in range(total)
    ]
    assert [lr_factor("step", s, warmup, total) for s in (10, 59, 60, 84, 85, 109)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert lr_factor("exponential", 10, warmup, total) == 1 and lr_factor("exponential", 110, warmup, total) == 0.01
    assert lr_factor("exponential", 60, warmup, total) == pytest.approx(0.1)
    assert {lr_factor("constant", s, warmup, total) for s in range(warmup, total)} == {1.0}


def test_the_base_config_is_a_point_of_the_space():
    from lookalike.studies.tune import default_point

    cfg = RunConfig()
    point = default_point(cfg, load_space(None))
    assert point["train.lr"] == cfg.train.lr and point["train.epochs"] == cfg.train.epochs
    assert point["tower.name"] == "mlp" and not any(k.startswith("tower.coarse_to_fine.") for k in point)
    assert with_overrides(cfg, point) == cfg  # the first trial trains the base config itself
    low = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-6})})
    assert "train.lr" not in default_point(low, load_space(None))  # outside the range: the sampler draws it
