"""Statistics of an A/B test on proportions (click-through, purchase rate): Wilson intervals, the two-proportion
z-test with an interval on the difference, and the minimum detectable effect at a sample size.

The classifier study's statistics (classify/stats.py: McNemar, DeLong) are for *paired* predictions on one test
set; an online experiment compares independent groups of customers, which these are for.
"""

from __future__ import annotations

import math

from scipy.stats import norm


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (sound at small n and near 0 or 1); None when n is 0."""
    if n <= 0:
        return None
    z = float(norm.ppf(1 - alpha / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int, alpha: float = 0.05) -> dict | None:
    """B (k2 of n2) against A (k1 of n1): the difference p2 − p1, its Wald interval, and the two-sided z-test
    with the pooled proportion. None when a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se0 if se0 > 0 else 0.0
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    zc = float(norm.ppf(1 - alpha / 2))
    return {
        "difference": p2 - p1,
        "ci": (p2 - p1 - zc * se, p2 - p1 + zc * se),
        "z": z,
        "p_value": float(2 * norm.sf(abs(z))),
        "significant": bool(se0 > 0 and 2 * norm.sf(abs(z)) < alpha),
    }


def minimum_detectable_effect(p: float, n1: int, n2: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest absolute difference from a baseline proportion `p` that groups of n1 and n2 detect with
    `power` at two-sided level `alpha` (normal approximation); None when a group is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    return z * math.sqrt(max(p * (1 - p), 1e-12) * (1 / n1 + 1 / n2))
