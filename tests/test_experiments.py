"""A/B experiments: the file's checks, the sticky hash split, the statistics (checked against scipy's chi-squared
test and known Wilson intervals), and the report from the event log's counters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from lookalike.errors import LookalikeError
from lookalike.evaluation.abtest import minimum_detectable_effect, two_proportion_test, wilson_ci
from lookalike.recommend.experiments import Experiment

EXP = {
    "name": "profiles-1",
    "variants": [{"name": "mean", "share": 0.3, "profile": "mean"}, {"name": "multi", "share": 0.7, "diversity": 0.1}],
    "min_lists": 100,
}
EXP_B = {"name": "b", "share": 0.5}


def test_the_split_is_sticky_and_follows_the_shares():
    exp = Experiment.from_json(EXP)
    names = [exp.assign(f"customer-{i}").name for i in range(20_000)]
    assert names == [exp.assign(f"customer-{i}").name for i in range(20_000)]
    assert names.count("mean") / len(names) == pytest.approx(0.3, abs=0.015)
    other = Experiment.from_json({**EXP, "name": "profiles-2"})
    agree = np.mean([other.assign(f"customer-{i}").name == n for i, n in enumerate(names)])
    assert agree == pytest.approx(0.3 * 0.3 + 0.7 * 0.7, abs=0.02)  # independent between experiments


@pytest.mark.parametrize(
    "change,message",
    [
        ({"variants": [{"name": "a", "share": 1.0}]}, "at least two"),
        ({"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}, "sum to 1"),
        ({"variants": [{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]}, "distinct"),
        ({"variants": [{"name": "a", "share": 0.5, "profile": "lstm"}, {"name": "b", "share": 0.5}]}, "profile"),
        ({"variants": [{"name": "a", "share": 0.5, "colour": 1}, {"name": "b", "share": 0.5}]}, "fields among"),
        ({"name": "a:b"}, "without ':'"),
        ({"variants": [{"name": "a", "share": 0.5, "reranker": "yes"}, {"name": "b", "share": 0.5}]}, "true or false"),
        ({"variants": [{"name": "a", "share": 0.5, "adapter": "A.pt"}, {"name": "b", "share": 0.5}]}, "both adapter"),
        (
            {"variants": [{"name": "a", "share": 0.5, "adapter": "A.pt", "store": "s", "profile": "tower"}, EXP_B]},
            "user tower",
        ),
    ],
)
def test_a_bad_experiment_file_is_named(change, message, tmp_path):
    f = tmp_path / "exp.json"
    f.write_text(json.dumps({**EXP, **change}))
    with pytest.raises(LookalikeError, match=message) as e:
        Experiment.load(f)
    assert str(f) in str(e.value)


def test_the_statistics_match_independent_computations():
    t = two_proportion_test(100, 1000, 130, 1000)
    chi2, p, _, _ = chi2_contingency([[100, 900], [130, 870]], correction=False)
    assert t["z"] ** 2 == pytest.approx(chi2) and t["p_value"] == pytest.approx(p) and t["significant"]
    assert t["difference"] == pytest.approx(0.03)
    lo, hi = wilson_ci(10, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.0552, 0.1744)
    assert minimum_detectable_effect(0.1, 1000, 1000) == pytest.approx(0.0376, abs=1e-4)
    assert two_proportion_test(0, 0, 1, 10) is None and wilson_ci(0, 0) is None


def test_the_report_reads_the_counters_and_says_when_it_is_too_early():
    exp = Experiment.from_json(EXP)
    counters = {
        "lists_served|customer_input|profiles-1:mean": 1000,
        "lists_clicked|customer_input|profiles-1:mean": 100,
        "lists_served|customer_input|profiles-1:multi": 1000,
        "lists_clicked|customer_input|profiles-1:multi": 130,
        "lists_purchased|customer_input|profiles-1:mean": 20,
        "lists_purchased|customer_input|profiles-1:multi": 25,
        "lists_served|customer_input|none": 50,  # outside the experiment: not counted
    }
    rep = exp.report(counters)
    assert rep["variants"]["mean"]["lists_served"] == 1000 and rep["variants"]["multi"]["ctr@10"]["rate"] == 0.13
    ctr = rep["comparisons"]["multi vs mean"]["ctr@10"]
    assert ctr["significant"] and not ctr["too_early"]
    buy = rep["comparisons"]["multi vs mean"]["purchase_rate"]
    assert not buy["significant"] and buy["too_early"] and buy["mde"] > exp.min_effect
    few = exp.report({k: v // 20 for k, v in counters.items()})  # 50 lists a variant: below min_lists
    assert few["comparisons"]["multi vs mean"]["ctr@10"]["too_early"]
