"""A/B analysis on a synthetic log with a known lift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.abtest import analyse
from experiments.logs import normalise
from nextbest.errors import DataError


def _log(settings, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_c, n_t = 4000, 4000
    control = pd.DataFrame({"action": [None] * n_c, "converted": rng.random(n_c) < 0.05,
                            "tier": rng.choice(["gold", "silver"], n_c)})
    treated = pd.DataFrame({"action": ["coupon"] * n_t, "converted": rng.random(n_t) < 0.15,
                            "tier": rng.choice(["gold", "silver"], n_t),
                            "policy": "bandit"})
    frame = pd.concat([control, treated], ignore_index=True)
    frame["item_price"] = 100.0
    frame["revenue"] = np.where(frame["converted"], 100.0, 0.0)
    return normalise(frame, settings)


def test_known_lift_is_detected_with_intervals(settings):
    report = analyse(_log(settings))
    overall = {g.group: g for g in report.overall}
    bandit = overall["bandit"]
    assert report.n_control == 4000
    assert bandit.conversion.diff == pytest.approx(0.10, abs=0.02)
    assert bandit.conversion.low < 0.10 < bandit.conversion.high
    assert bandit.conversion.significant and bandit.conversion.p_value < 1e-6
    assert bandit.revenue.diff == pytest.approx(10.0, abs=2.0)
    # Coupon cost 5 + 10% of 100 = 15 per conversion: profit lift = 10 - 0.15 * 15.
    assert bandit.profit.diff == pytest.approx(10.0 - 0.15 * 15.0, abs=2.0)
    assert {g.tier for g in report.per_tier} == {"gold", "silver"}
    coupon = {a.arm: a for a in report.arms}["coupon"]
    assert coupon.spend == pytest.approx(15.0 * coupon.revenue / 100.0)
    assert coupon.roi == pytest.approx((coupon.incremental_revenue - coupon.spend)
                                       / coupon.spend)


def test_no_lift_is_not_significant(settings):
    log = _log(settings, seed=1)
    rng = np.random.default_rng(2)
    treated = ~log["control"]
    log.loc[treated, "converted"] = rng.random(int(treated.sum())) < 0.05
    log["revenue"] = np.where(log["converted"], 100.0, 0.0)
    bandit = analyse(log).overall[0]
    assert bandit.conversion.low < 0 < bandit.conversion.high


def test_log_without_control_group_is_refused(settings):
    log = _log(settings)
    with pytest.raises(DataError, match="control group"):
        analyse(log[~log["control"]])
