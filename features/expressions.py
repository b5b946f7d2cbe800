"""The one expression language of nextbest: tag rules, campaign triggers and audiences.

A condition such as ``views_in_category >= 5 and frequency_30d == 0`` or
``tier == 'dormant' and churn_probability > 0.6 and 'coupon_abuser' not in tags`` is parsed
once into a small safe subset of Python: comparisons (chained too), ``and`` / ``or`` /
``not``, ``+ - * /``, ``in`` / ``not in`` over a literal list or over a list-valued name
(``'vip' in tags``), names and constants. Calls, attributes, subscripts and everything else
are refused when the expression is compiled, naming the rule, and so is a name listed in
``policy.forbidden_features`` (device model, OS, IP, ...), whatever the data holds.

:func:`compile_expression` also checks every name against the names the caller says exist
(feature columns, event fields, ...) and every quoted value compared with a list-valued
name against its known values (tag names), so a misspelt column or tag is an error at
start-up, not a rule that silently never holds.

A compiled :class:`Expression` evaluates two ways with the same meaning:

- :meth:`Expression.holds` on one row (a mapping of names to values): a name whose value
  is missing (None or NaN) makes the condition false;
- :meth:`Expression.mask` on a whole frame at once (tags over every user of a build,
  audiences over the online store): a boolean numpy array, false wherever a name it reads is
  missing on that row.

Both judge each part of a top-level ``or`` on its own, so a value missing in one part (no
churn model has scored the user) never hides another part that holds (a tier drop).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from nextbest.config import PolicyConfig
from nextbest.errors import ConfigError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.BoolOp,
            ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.BinOp, ast.Compare, ast.In,
            ast.NotIn, *_BINARY, *_COMPARE)


class _Missing(Exception):
    """A name has no value on this row: the condition does not hold."""


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class Expression:
    """A parsed, checked condition; ``names`` are the names it reads."""

    text: str
    tree: ast.Expression
    names: frozenset[str] = field(default_factory=frozenset)

    # -- one row ------------------------------------------------------------------------------
    def holds(self, row: Mapping[str, Any]) -> bool:
        """Whether the condition is true on ``row`` (false when a name it reads is missing
        or a value cannot be compared; of a top-level ``or``, each part on its own)."""
        parts = self._parts
        if len(parts) > 1:
            return any(part.holds(row) for part in parts)
        try:
            return bool(self._on_row(row))
        except (_Missing, TypeError, ZeroDivisionError):
            return False

    @cached_property
    def _on_row(self) -> RowFunction:
        """The condition compiled to a function of one row (:func:`_compile_row`)."""
        return _compile_row(self.tree.body)

    # -- a frame ------------------------------------------------------------------------------
    def mask(self, frame: pd.DataFrame, extra: Mapping[str, Any] | None = None) -> np.ndarray:
        """Where the condition is true on each row of ``frame`` (columns are the names;
        ``extra`` adds names with one value for every row). A row missing a value the
        condition reads is false, except that each part of a top-level ``or`` is judged on
        its own: ``tier_drop >= 2 or churn_probability >= 0.6`` holds for a tier drop even
        where no churn model has scored the user."""
        parts = self._parts
        if len(parts) > 1:
            return np.logical_or.reduce([part.mask(frame, extra) for part in parts])
        n = len(frame)
        names = dict(extra or {})
        present = np.ones(n, dtype=bool)
        for name in self.names:
            if name in names:
                continue
            if name not in frame.columns:
                return np.zeros(n, dtype=bool)  # a column this data does not have
            column = frame[name]
            names[name] = column
            present &= column.notna().to_numpy()
        with np.errstate(all="ignore"):
            result = _frame(self.tree.body, names, n)
        values = np.asarray(pd.Series(result).fillna(False), dtype=bool) \
            if not np.isscalar(result) else np.full(n, bool(result))
        return values & present

    # -- parts --------------------------------------------------------------------------------
    def parts(self) -> list[Expression]:
        """The top-level ``or`` parts, each its own expression (the whole one when it is not
        an ``or``), so a rule can say which part held and a value missing in one part does
        not hide another that holds."""
        return list(self._parts)

    @cached_property
    def _parts(self) -> tuple[Expression, ...]:
        """:meth:`parts`, built once: :meth:`holds` runs per event on the trigger path."""
        body = self.tree.body
        if not (isinstance(body, ast.BoolOp) and isinstance(body.op, ast.Or)):
            return (self,)
        return tuple(Expression(text=ast.unparse(part), tree=ast.Expression(body=part),
                                names=frozenset(n.id for n in ast.walk(part)
                                                if isinstance(n, ast.Name)))
                     for part in body.values)


RowFunction = Callable[[Mapping[str, Any]], Any]


def _compile_row(node: ast.AST) -> RowFunction:
    """``node`` as a function of one row, built once per expression: the tree is walked
    here, not on every evaluation (a rule runs on every decision). A name whose value is
    missing raises ``_Missing``; ``and``/``or`` stop at the first part that decides and
    give a bool; a chained comparison stops at the first that fails."""
    if isinstance(node, ast.Constant):
        constant = node.value
        return lambda row: constant
    if isinstance(node, ast.Name):
        name = node.id

        def value_of(row: Mapping[str, Any]) -> Any:
            value = row.get(name)
            if _is_missing(value):
                raise _Missing(name)
            return value
        return value_of
    if isinstance(node, ast.List | ast.Tuple):
        elements = [_compile_row(element) for element in node.elts]
        return lambda row: [element(row) for element in elements]
    if isinstance(node, ast.BoolOp):
        parts = [_compile_row(v) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda row: all(bool(part(row)) for part in parts)
        return lambda row: any(bool(part(row)) for part in parts)
    if isinstance(node, ast.UnaryOp):
        operand = _compile_row(node.operand)
        if isinstance(node.op, ast.Not):
            return lambda row: not operand(row)
        return lambda row: -operand(row)
    if isinstance(node, ast.BinOp):
        combine = _BINARY[type(node.op)]
        left_of, right_of = _compile_row(node.left), _compile_row(node.right)
        return lambda row: combine(left_of(row), right_of(row))
    if isinstance(node, ast.Compare):
        first = _compile_row(node.left)
        steps = [(_compare(op), _compile_row(comparator))
                 for op, comparator in zip(node.ops, node.comparators, strict=True)]

        def compared(row: Mapping[str, Any]) -> bool:
            left = first(row)
            for test, right_of in steps:
                right = right_of(row)
                if not test(left, right):
                    return False
                left = right
            return True
        return compared
    raise TypeError(type(node).__name__)  # unreachable: compile_expression refused it


def _compare(op: ast.cmpop) -> Callable[[Any, Any], Any]:
    """The test of one comparison operator on two values (``in``: membership)."""
    if isinstance(op, ast.In):
        return lambda left, right: left in right
    if isinstance(op, ast.NotIn):
        return lambda left, right: left not in right
    return _COMPARE[type(op)]


def _contains(container: Any, item: Any, n: int) -> Any:
    """``item in container`` for every row: a list-valued column holding a scalar, or a
    scalar/column in a literal list."""
    if isinstance(container, list):  # a literal list
        if isinstance(item, pd.Series | np.ndarray):
            return pd.Series(item).isin(container).to_numpy()
        return np.full(n, item in container)
    if isinstance(container, pd.Series):  # a list-valued column, e.g. tags
        return np.fromiter(((item in value) if isinstance(value, list | tuple | np.ndarray)
                            else False for value in container), dtype=bool, count=n)
    return np.full(n, item in container)


def _frame(node: ast.AST, names: Mapping[str, Any], n: int) -> Any:
    """Evaluate ``node`` on whole columns at once (numpy/pandas broadcasting)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        value = names[node.id]
        numeric = isinstance(value, pd.Series) and (pd.api.types.is_numeric_dtype(value)
                                                    or pd.api.types.is_bool_dtype(value))
        return value.to_numpy() if numeric else value
    if isinstance(node, ast.List | ast.Tuple):
        return [_frame(element, names, n) for element in node.elts]
    if isinstance(node, ast.BoolOp):
        parts = [np.asarray(_frame(v, names, n), dtype=bool) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        out = parts[0]
        for part in parts[1:]:
            out = combine(out, part)
        return out
    if isinstance(node, ast.UnaryOp):
        value = _frame(node.operand, names, n)
        return np.logical_not(np.asarray(value, dtype=bool)) if isinstance(node.op, ast.Not) \
            else -value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_frame(node.left, names, n), _frame(node.right, names, n))
    if isinstance(node, ast.Compare):
        left = _frame(node.left, names, n)
        out = np.ones(n, dtype=bool)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _frame(comparator, names, n)
            if isinstance(op, ast.In | ast.NotIn):
                hit = np.asarray(_contains(right, left, n), dtype=bool)
                part = hit if isinstance(op, ast.In) else ~hit
            else:
                part = np.asarray(_COMPARE[type(op)](left, right))
                part = np.asarray(pd.Series(part).fillna(False), dtype=bool) \
                    if part.dtype == object else part.astype(bool)
            out &= part
            left = right
        return out
    raise TypeError(type(node).__name__)


def compile_expression(text: str, *, rule: str, known: Collection[str] | None = None,
                       values: Mapping[str, Collection[str]] | None = None,
                       forbidden: PolicyConfig | None = None) -> Expression:
    """Parse and check ``text`` (the condition of ``rule``, named in every error).

    ``known``: the names the expression may read (None: any); ``values``: for list-valued
    names (``tags``), the values a quoted string tested against them may take;
    ``forbidden``: the policy whose ``forbidden_features`` it may never read, even when the
    data has them.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{rule}: {text!r} is not a valid expression ({exc.msg})") from exc
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConfigError(f"{rule}: {text!r} may not use {type(node).__name__} (only "
                              "comparisons, and/or/not, + - * /, in, names and constants)")
        if isinstance(node, ast.Name):
            names.add(node.id)
    if not _is_condition(tree.body):
        raise ConfigError(f"{rule}: {text!r} is not a condition: it must be true or false "
                          "(compare a value, e.g. 'recency_days > 30')")
    if forbidden is not None:
        forbidden.refuse_forbidden(names, f"{rule}: {text!r}")
    if known is not None:
        unknown = sorted(names - set(known))
        if unknown:
            raise ConfigError(f"{rule}: {text!r} reads unknown name(s) {', '.join(unknown)}")
    _check_values(tree, rule, text, values or {})
    return Expression(text=text, tree=tree, names=frozenset(names))


def _is_condition(node: ast.AST) -> bool:
    """Whether ``node`` yields true or false: a comparison, and/or/not of conditions, or a
    boolean constant."""
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.BoolOp):
        return all(_is_condition(v) for v in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _is_condition(node.operand)
    return isinstance(node, ast.Constant) and isinstance(node.value, bool)


def _check_values(tree: ast.Expression, rule: str, text: str,
                  values: Mapping[str, Collection[str]]) -> None:
    """Refuse ``'x' in tags`` when ``x`` is not one of the known values of ``tags``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if not isinstance(op, ast.In | ast.NotIn):
                continue
            if isinstance(right, ast.Name) and right.id in values and \
                    isinstance(left, ast.Constant) and left.value not in values[right.id]:
                raise ConfigError(f"{rule}: {text!r} tests {left.value!r} in {right.id}, which "
                                  f"is not one of {', '.join(sorted(values[right.id]))}")
