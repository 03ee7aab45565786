"""Rule conditions: parsed once at load by simpleeval (never Python ``eval``).

An expression may use the device's point names, numbers, strings, ``True``/``False``,
comparisons (chained too: ``0.5 <= level < 2``), ``and``/``or``/``not``, arithmetic, bit
operators (``status & 4``) and a few functions (``abs``, ``min``, ``max``, ``bit``).
"""

from __future__ import annotations

import ast
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from simpleeval import InvalidExpression, SimpleEval

from drivers.base import Value


class ExprError(ValueError):
    """An expression that cannot be used; the message says why, in a user's words."""


def _bit(value: int, n: int) -> bool:
    return bool((int(value) >> int(n)) & 1)


FUNCTIONS = {"abs": abs, "min": min, "max": max, "bit": _bit, "round": round}
_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.Invert,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.LShift,
    ast.RShift,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Call,
    ast.IfExp,
)


@dataclass(frozen=True)
class Expr:
    """A compiled condition: its text, the point names it reads, and its parsed tree."""

    text: str
    names: frozenset[str]
    _tree: Any  # our own check's tree (mode "eval")
    _parsed: Any  # simpleeval's tree, parsed once
    first_name: str | None
    """The point named first in the text: what a reader takes the rule to be about."""

    @cached_property
    def _evaluator(self) -> SimpleEval:
        """Made at the first evaluation, not at load: ``check`` never evaluates, and a
        SimpleEval costs more to build than the whole parse (a pack rule on 20,000
        devices is 20,000 of them)."""
        return SimpleEval(functions=FUNCTIONS)

    def evaluate(self, values: Mapping[str, Value]) -> bool:
        self._evaluator.names = values
        try:
            return bool(self._evaluator.eval(self.text, previously_parsed=self._parsed))
        except (InvalidExpression, TypeError, ValueError, ArithmeticError):
            return False  # a missing value, or a string compared with a number: no match


def compile_expr(text: str, points: frozenset[str] | None = None) -> Expr:
    """Parse and check ``text``; with ``points``, every name must be one of them."""
    tree, names, parsed, first = _parse(text.strip())
    if points is not None and (unknown := names - points):
        raise ExprError(
            f"unknown point{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))} "
            f"in {text!r} (the device has: {', '.join(sorted(points))})"
        )
    return Expr(text.strip(), names, tree, parsed, first)


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[Any, frozenset[str], Any, str | None]:
    """The checked tree, the names, simpleeval's tree and the first name of one condition
    text: parsed
    once per text, as a pack's few conditions are bound to every device that fits (the
    trees are only read, never changed, so the instances share them)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error in {text!r} at column {exc.offset}: {exc.msg}") from None
    names: set[str] = set()
    named: list[ast.Name] = []
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExprError(f"{type(node).__name__} is not allowed in a rule condition: {text!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ExprError(f"only {', '.join(sorted(FUNCTIONS))} may be called: {text!r}")
        elif isinstance(node, ast.Name) and node.id not in FUNCTIONS:
            names.add(node.id)
            named.append(node)
    names -= {"True", "False", "None"}
    named = [n for n in named if n.id in names]
    first = min(named, key=lambda n: (n.lineno, n.col_offset)).id if named else None
    return tree, frozenset(names), SimpleEval(functions=FUNCTIONS).parse(text), first


def deadband_clear(when: Expr, deadband: float) -> Expr:
    """The clear condition of ``point OP limit`` with a deadband on the return side:
    ``level >= 0.25`` with deadband 0.05 clears at ``level < 0.2`` (ISA / Rockwell)."""
    body = when._tree.body
    if (
        isinstance(body, ast.Compare)
        and len(body.ops) == 1
        and isinstance(body.left, ast.Name)
        and isinstance(body.comparators[0], ast.Constant)
        and isinstance(body.comparators[0].value, int | float)
        and not isinstance(body.comparators[0].value, bool)
    ):
        point, limit, op = body.left.id, float(body.comparators[0].value), body.ops[0]
        if isinstance(op, ast.Gt | ast.GtE):
            return compile_expr(f"{point} < {limit - deadband!r}")
        if isinstance(op, ast.Lt | ast.LtE):
            return compile_expr(f"{point} > {limit + deadband!r}")
    raise ExprError(
        f"deadband needs a condition of the form 'point >= limit' or 'point < limit'; "
        f"use clear_when for {when.text!r}"
    )


TEMPLATE_NAMES = frozenset({"device", "rule", "severity", "value", "state"})


def check_template(template: str, points: frozenset[str]) -> None:
    allowed = points | TEMPLATE_NAMES
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ExprError(f"message template {template!r}: {exc}") from None
    for name in fields:
        base = name.split(".")[0].split("[")[0]
        if base and base not in allowed:
            raise ExprError(f"message template names {base!r}, which is not a point of the device")


def render(template: str, values: Mapping[str, Any]) -> str:
    class Missing(dict[str, Any]):
        def __missing__(self, key: str) -> str:
            return "?"

    safe = Missing({k: (math.nan if v is None else v) for k, v in values.items()})
    try:
        return string.Formatter().vformat(template, (), safe)
    except (ValueError, TypeError):
        return template
