"""The one expression language: the same meaning on a row and on a frame, checked names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.expressions import compile_expression
from nextbest.errors import ConfigError

FRAME = pd.DataFrame({
    "tier": ["gold", "dormant", "dormant", None],
    "churn_probability": [0.2, 0.8, math.nan, 0.9],
    "views": [6, 1, 9, 7],
    "tags": [["vip"], [], ["coupon_abuser", "vip"], []],
})
CASES = [
    ("tier == 'dormant' and churn_probability > 0.6", [False, True, False, False]),
    ("views >= 5 and not (tier == 'gold')", [False, False, True, False]),
    ("'vip' in tags and 'coupon_abuser' not in tags", [True, False, False, False]),
    # Each part of a top-level "or" on its own: a missing tier hides no true other part...
    ("tier in ['gold', 'dormant'] or views * 2 > 13", [True, True, True, True]),
    # ... but inside an "and", a missing value makes the whole condition false.
    ("views > 0 and (tier == 'gold' or views * 2 > 13)", [True, False, True, False]),
    ("0.5 < churn_probability <= 0.9", [False, True, False, True]),
    ("views / 2 - 1 >= 2", [True, False, True, True]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_a_row_and_a_frame_give_the_same_answer(text: str, expected: list[bool]) -> None:
    expression = compile_expression(text, rule="case")
    by_row = [expression.holds(row) for row in FRAME.to_dict("records")]
    assert by_row == expected
    assert expression.mask(FRAME).tolist() == expected


def test_a_missing_value_makes_the_condition_false_even_under_not() -> None:
    expression = compile_expression("not (churn_probability < 0.5)", rule="case")
    assert expression.mask(FRAME).tolist() == [False, True, False, True]
    assert expression.holds({"churn_probability": None}) is False
    assert expression.holds({}) is False


def test_extra_names_hold_one_value_for_every_row() -> None:
    expression = compile_expression("views >= threshold", rule="case")
    assert expression.mask(FRAME, extra={"threshold": 7}).tolist() == [False, False, True, True]


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "views.real > 1",
                                  "views >= ", "[x for x in tags]", "tags[0] == 'vip'",
                                  "lambda: 1", "views", "views + 1"])
def test_anything_outside_the_subset_is_refused_naming_the_rule(text: str) -> None:
    with pytest.raises(ConfigError, match="campaign 'bad'"):
        compile_expression(text, rule="campaign 'bad'")


def test_unknown_names_and_tag_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown name.*viewz"):
        compile_expression("viewz >= 5", rule="r", known={"views"})
    with pytest.raises(ConfigError, match="'vipp' in tags.*coupon_abuser, vip"):
        compile_expression("'vipp' in tags", rule="r", known={"tags"},
                           values={"tags": {"vip", "coupon_abuser"}})
    ok = compile_expression("'vip' in tags", rule="r", known={"tags"},
                            values={"tags": {"vip"}})
    assert ok.names == {"tags"}


def test_a_frame_without_a_named_column_matches_nobody() -> None:
    expression = compile_expression("missing_column > 1", rule="r")
    assert not np.any(expression.mask(FRAME))
