"""Statistics shared by the A/B analysis and the campaign reports: one implementation each.

- :func:`two_proportion`: difference of two conversion rates, Agresti-Caffo interval and a
  pooled z-test;
- :func:`welch`: difference of two means, Welch's t-test and interval
  (``scipy.stats.ttest_ind(equal_var=False)``).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel
from scipy import stats


class Interval(BaseModel):
    """A difference (treatment - control) with its interval and test."""

    treatment: float
    control: float
    diff: float
    low: float
    high: float
    p_value: float
    significant: bool


def two_proportion(x_t: int, n_t: int, x_c: int, n_c: int, alpha: float) -> Interval:
    """Difference of conversion rates with an Agresti-Caffo interval (Wald after adding one
    success and one failure per group, which keeps its coverage for small groups and rates
    near 0) and a pooled two-sided z-test."""
    p_t, p_c = x_t / n_t, x_c / n_c
    diff = p_t - p_c
    z = stats.norm.ppf(1 - alpha / 2)
    a_t, a_c = (x_t + 1) / (n_t + 2), (x_c + 1) / (n_c + 2)
    centre = a_t - a_c
    se = math.sqrt(a_t * (1 - a_t) / (n_t + 2) + a_c * (1 - a_c) / (n_c + 2))
    pooled = (x_t + x_c) / (n_t + n_c)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    p_value = 1.0 if se0 == 0 else float(2 * stats.norm.sf(abs(diff) / se0))
    return Interval(treatment=p_t, control=p_c, diff=diff, low=centre - z * se,
                    high=centre + z * se, p_value=p_value, significant=p_value < alpha)


def welch(treatment: np.ndarray, control: np.ndarray, alpha: float) -> Interval:
    """Difference of means with Welch's t-test and its interval
    (``scipy.stats.ttest_ind(equal_var=False)``).

    Without any spread (every value of both groups equal within its group, or a group of
    one) there is nothing to test: the interval is the difference itself, significant when
    it is not 0.
    """
    m_t, m_c = float(treatment.mean()), float(control.mean())
    diff = m_t - m_c
    if min(len(treatment), len(control)) < 2 or (treatment.var() == 0 and control.var() == 0):
        return Interval(treatment=m_t, control=m_c, diff=diff, low=diff, high=diff,
                        p_value=1.0 if diff == 0 else 0.0, significant=diff != 0)
    test = stats.ttest_ind(treatment, control, equal_var=False)
    interval = test.confidence_interval(confidence_level=1 - alpha)
    p_value = float(test.pvalue)
    return Interval(treatment=m_t, control=m_c, diff=diff, low=float(interval.low),
                    high=float(interval.high), p_value=p_value, significant=p_value < alpha)
