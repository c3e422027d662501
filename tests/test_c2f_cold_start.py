"""Zero-shot cold-start split: held-out values never reach training or validation."""

from __future__ import annotations

import pytest

from lookalike.catalogue import load_catalogue
from lookalike.catalogue.split import cold_start_split
from lookalike.config import RunConfig
from lookalike.errors import LookalikeError


@pytest.fixture(scope="module")
def catalogue(fashion_dir):
    return load_catalogue(fashion_dir)


def test_article_type_cold_start(catalogue):
    s = cold_start_split(catalogue, "articleType", 0.15, seed=42, fraction=0.1)
    by_id = {p.id: p for p in catalogue.products}
    held = {by_id[i].value("articleType") for i in s["test"]}
    seen = {by_id[i].value("articleType") for i in s["train"] + s["val"]}
    assert held and not held & seen  # zero-shot: no held-out article type is ever trained on
    assert sum(len(v) for v in s.values()) == len(catalogue)
    assert 0.08 < len(s["test"]) / len(catalogue) < 0.2
    assert 0.1 < len(s["val"]) / (len(s["train"]) + len(s["val"])) < 0.2
    assert s == cold_start_split(
        catalogue.subset(list(reversed(list(by_id)))), "articleType", 0.15, seed=42, fraction=0.1
    )


def test_season_cold_start_with_explicit_values(catalogue):
    s = cold_start_split(catalogue, "season", 0.15, seed=42, values=["Spring"])
    by_id = {p.id: p for p in catalogue.products}
    assert {by_id[i].value("season") for i in s["test"]} == {"Spring"}
    assert "Spring" not in {by_id[i].value("season") for i in s["train"] + s["val"]}
    with pytest.raises(LookalikeError, match="Monsoon"):
        cold_start_split(catalogue, "season", 0.15, seed=42, values=["Monsoon"])
    with pytest.raises(LookalikeError, match="fabric"):
        cold_start_split(catalogue, "fabric", 0.15, seed=42)


def test_config_option():
    cfg = RunConfig.model_validate({"split": {"cold_start": {"field": "season", "values": ["Spring"]}}})
    assert cfg.split.cold_start.values == ["Spring"] and RunConfig().split.cold_start is None


def test_few_large_values_still_hold_one_out(synthetic):
    s = cold_start_split(synthetic, "category", 0.15, seed=1, fraction=0.1)  # 5 categories of ~48: each > 10%
    held = {p.value("category") for p in synthetic.products if p.id in set(s["test"])}
    assert len(held) == 1 and s["test"] and s["train"]
