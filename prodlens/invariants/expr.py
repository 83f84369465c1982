"""A small, safe expression language for cross-field invariants (no ``eval()``).

An expression is parsed with :mod:`ast` and only these forms are accepted:

* field references: ``latency_ms``, ``features.age``, ``output.score``,
  ``segment.country``, ``features["is-new"]`` (subscripts with a string literal
  for names that are not identifiers);
* literals: numbers, strings, ``True`` / ``False``; tuples or lists of literals
  only on the right of ``in`` / ``not in``;
* arithmetic ``+ - * / // %`` and ``**`` with a literal exponent of at most 16
  in absolute value, unary ``-`` / ``+``;
* comparisons ``== != < <= > >=`` (chains like ``0 <= x < 1`` work),
  ``in`` / ``not in`` a literal tuple or list;
* boolean ``and`` / ``or`` / ``not`` (on truthiness, results are booleans).

No calls, attribute access on values, comprehensions, lambdas or names other than
field references — the parser rejects them with a message naming the construct.

Semantics, identical for one event (:meth:`Expression.evaluate`) and for a batch
(:meth:`Expression.evaluate_columns`, numpy-vectorised for numeric columns):

* If any referenced field is missing or null the expression does not apply to
  that event (``SKIP``); ``where:`` filters and ``on_missing`` build on this.
* Numbers are evaluated as 64-bit floats (integers above 2**53 lose precision).
* A type error (``"a" < 1``), a division or modulo by zero, or a non-finite
  arithmetic result makes the event an ``ERROR`` — unless a short-circuit
  (``False and ...``, ``True or ...``) means Python would never evaluate it.
* Otherwise the truthiness of the result is ``TRUE`` / ``FALSE``; comparisons
  follow Python (``1 == 1.0 == True``, ``"1" != 1``).

>>> e = Expression.parse('output.label == "fraud" or output.score < 0.5')
>>> e.fields
(('output', 'label'), ('output', 'score'))
>>> e.evaluate({"output": {"label": "ok", "score": 0.7}}) == FALSE
True
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

TRUE, FALSE, SKIP, ERROR = "true", "false", "skip", "error"
MAX_EXPONENT = 16
MAX_LENGTH = 2000

Path = tuple[str, ...]


class ExpressionError(ValueError):
    """The expression text is not in the allowed language."""


# ----------------------------------------------------------------------------------- parsing
# Compiled nodes are plain tuples: ("const", v), ("field", path), ("neg"|"pos"|"not", x),
# ("bin", op, a, b), ("and"|"or", [xs]), ("cmp", first, [(op, rhs), ...]), ("in", x, consts, negate)

_BINOPS: dict[type, str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/",
                            ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_CMPOPS: dict[type, str] = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=",
                            ast.Gt: ">", ast.GtE: ">="}
_PY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
_RESERVED = {"true": "True", "false": "False", "null": "a not_null check", "none": "a not_null check"}


def _literal(value: Any, text: str) -> Any:
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if not math.isfinite(float(value)):
            raise ExpressionError(f"expression {text!r}: non-finite number literal")
        return float(value)
    if value is None:
        raise ExpressionError(f"expression {text!r}: None is not allowed; use a not_null check "
                              "(a null field already makes the rule not apply)")
    raise ExpressionError(f"expression {text!r}: literal {value!r} of type {type(value).__name__} "
                          "is not allowed (numbers, strings, True, False only)")


def _field_path(node: ast.AST, text: str) -> Path | None:
    """The path of a field reference, or None when the node is not one."""
    if isinstance(node, ast.Name):
        if node.id.lower() in _RESERVED:
            raise ExpressionError(f"expression {text!r}: {node.id!r} is not a literal here; "
                                  f"use {_RESERVED[node.id.lower()]}")
        return (node.id,)
    if isinstance(node, ast.Attribute):
        base = _field_path(node.value, text)
        return None if base is None else base + (node.attr,)
    if isinstance(node, ast.Subscript):
        base = _field_path(node.value, text)
        key = node.slice
        if base is None or not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise ExpressionError(f"expression {text!r}: subscripts must be a field with a string "
                                  f"literal key, like features[\"is-new\"] (col {node.col_offset + 1})")
        return base + (key.value,)
    return None


def _compile(node: ast.AST, text: str, fields: list[Path]) -> tuple:
    path = _field_path(node, text)
    if path is not None:
        if path not in fields:
            fields.append(path)
        return ("field", path)
    if isinstance(node, ast.Constant):
        return ("const", _literal(node.value, text))
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, text, fields)
        if isinstance(node.op, ast.Not):
            return ("not", operand)
        if isinstance(node.op, ast.USub):
            if operand[0] == "const" and isinstance(operand[1], float):
                return ("const", -operand[1])
            return ("neg", operand)
        if isinstance(node.op, ast.UAdd):
            return ("pos", operand)
        raise ExpressionError(f"expression {text!r}: operator ~ is not allowed")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExpressionError(f"expression {text!r}: operator {type(node.op).__name__} is not "
                                  "allowed (use + - * / // % **)")
        right = _compile(node.right, text, fields)
        if op == "**" and not (right[0] == "const" and isinstance(right[1], float)
                               and abs(right[1]) <= MAX_EXPONENT):
            raise ExpressionError(f"expression {text!r}: the exponent of ** must be a number "
                                  f"literal of at most {MAX_EXPONENT} in absolute value")
        return ("bin", op, _compile(node.left, text, fields), right)
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        return (kind, [_compile(v, text, fields) for v in node.values])
    if isinstance(node, ast.Compare):
        if len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            return ("in", _compile(node.left, text, fields),
                    _literal_collection(node.comparators[0], text), isinstance(node.ops[0], ast.NotIn))
        chain = []
        for op_node, rhs in zip(node.ops, node.comparators):
            op = _CMPOPS.get(type(op_node))
            if op is None:
                raise ExpressionError(f"expression {text!r}: comparison {type(op_node).__name__} is "
                                      "not allowed here (in / not in cannot be chained; is / is not "
                                      "are not supported)")
            chain.append((op, _compile(rhs, text, fields)))
        return ("cmp", _compile(node.left, text, fields), chain)
    if isinstance(node, ast.Call):
        raise ExpressionError(f"expression {text!r}: function calls are not allowed "
                              f"(col {node.col_offset + 1})")
    raise ExpressionError(f"expression {text!r}: {type(node).__name__} is not allowed "
                          "(only fields, literals, arithmetic, comparisons and and/or/not)")


def _literal_collection(node: ast.AST, text: str) -> tuple:
    if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        raise ExpressionError(f"expression {text!r}: the right side of in / not in must be a "
                              "literal tuple or list, like (\"a\", \"b\")")
    values = []
    for elt in node.elts:
        if not isinstance(elt, ast.Constant):
            if (isinstance(elt, ast.UnaryOp) and isinstance(elt.op, ast.USub)
                    and isinstance(elt.operand, ast.Constant)
                    and isinstance(elt.operand.value, (int, float))
                    and not isinstance(elt.operand.value, bool)):
                values.append(-_literal(elt.operand.value, text))
                continue
            raise ExpressionError(f"expression {text!r}: in / not in lists may hold literals only")
        values.append(_literal(elt.value, text))
    return tuple(values)


# ----------------------------------------------------------------------------------- values
def get_path(event: Mapping[str, Any] | None, path: Path) -> Any:
    """The value at ``path`` in an event dict; None when any step is missing."""
    value: Any = event
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def column_values(columns: Mapping[str, Any], path: Path, n: int) -> list:
    """One field of a columnar batch (the canonical columns of ``prodlens.contract``) as a list.

    Top-level columns are lists (a scalar repeats for every row); nested objects
    (features, output, segment) are dicts of such lists. One dict per row is
    accepted as well. A path naming a whole nested object gives one dict per row.
    """
    top = columns.get(path[0])
    if top is None:
        return [None] * n
    if isinstance(top, Mapping):  # canonical: a dict of columns
        if len(path) == 1:
            rows: list[dict] = [{} for _ in range(n)]
            for key, col in top.items():
                values = col if isinstance(col, list) else [col] * n
                for row, v in zip(rows, values):
                    if v is not None:
                        row[key] = v
            return rows
        col = top.get(path[1])
        if col is None:
            return [None] * n
        if not isinstance(col, list):
            col = [col] * n
        rest = path[2:]
        return list(col) if not rest else [get_path(v, rest) for v in col]
    if not isinstance(top, list):
        top = [top] * n
    if len(path) == 1:
        return list(top)
    rest = path[1:]
    return [get_path(v, rest) if isinstance(v, Mapping) else None for v in top]


def _num(v: Any) -> Any:
    # ints become floats so the scalar and vectorised paths compute identically
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def to_array(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(values as an array, presence mask). Numeric → float64, all-bool → bool, else object."""
    present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float}:
        arr = np.array([float(v) if v is not None else np.nan for v in values], dtype=np.float64)
    elif kinds == {bool}:
        arr = np.array([bool(v) for v in values], dtype=bool)
    else:
        arr = np.empty(len(values), dtype=object)
        arr[:] = [_num(v) for v in values]
    return arr, present


# ----------------------------------------------------------------------------------- the class
@dataclass(frozen=True)
class Expression:
    """A parsed, validated expression. Build with :meth:`parse`."""

    source: str
    fields: tuple[Path, ...]
    tree: tuple

    @classmethod
    def parse(cls, text: str) -> "Expression":
        if not isinstance(text, str) or not text.strip():
            raise ExpressionError("expression must be a non-empty string")
        if len(text) > MAX_LENGTH:
            raise ExpressionError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
        try:
            node = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as exc:
            raise ExpressionError(f"expression {text!r}: invalid syntax at column {exc.offset}: "
                                  f"{exc.msg}") from None
        fields: list[Path] = []
        tree = _compile(node, text, fields)
        return cls(text, tuple(fields), tree)

    def __str__(self) -> str:
        return self.source

    # ---------------------------------------------------------------- one event (reference)
    def evaluate(self, event: Mapping[str, Any]) -> str:
        """TRUE, FALSE, SKIP (a referenced field is null/missing) or ERROR for one event dict."""
        values = {p: get_path(event, p) for p in self.fields}
        if any(v is None for v in values.values()):
            return SKIP
        try:
            return TRUE if _truthy(_eval_py(self.tree, {p: _num(v) for p, v in values.items()})) else FALSE
        except _EvalError:
            return ERROR

    # ---------------------------------------------------------------- a batch
    def evaluate_columns(self, getter: Callable[[Path], tuple[np.ndarray, np.ndarray]],
                         n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate over ``n`` events at once.

        ``getter(path)`` returns ``(values, present)`` as made by :func:`to_array`.
        Returns boolean arrays ``(applies, holds, error)``: ``applies`` is False where
        a field is missing (SKIP); ``holds``/``error`` are meaningful where it applies.
        """
        applies = np.ones(n, dtype=bool)
        cols: dict[Path, np.ndarray] = {}
        for p in self.fields:
            arr, present = getter(p)
            cols[p] = arr
            applies &= present
        idx = np.flatnonzero(applies)
        holds = np.zeros(n, dtype=bool)
        error = np.zeros(n, dtype=bool)
        if idx.size:
            sub = {p: a[idx] for p, a in cols.items()}
            with np.errstate(all="ignore"):
                val, err = _eval_np(self.tree, sub, idx.size)
            truth = _truthy_np(val, idx.size)
            holds[idx] = truth & ~err
            error[idx] = err
        return applies, holds, error

    def evaluate_rows(self, events: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`evaluate_columns` over a list of event dicts."""
        cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

        def getter(p: Path):
            if p not in cache:
                cache[p] = to_array([get_path(e, p) for e in events])
            return cache[p]
        return self.evaluate_columns(getter, len(events))


# ----------------------------------------------------------------------------------- scalar eval
class _EvalError(Exception):
    pass


def _truthy(v: Any) -> bool:
    return bool(v)


def _checked(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise _EvalError("non-finite result")
    if isinstance(v, complex):  # a negative base to a fractional power
        raise _EvalError("complex result")
    return v


def _py_binop(op: str, a: Any, b: Any) -> Any:
    try:
        return _checked(_PY_OPS[op](a, b))
    except (TypeError, ZeroDivisionError, OverflowError, ValueError) as exc:
        raise _EvalError(str(exc)) from None


def _py_in(x: Any, consts: tuple) -> bool:
    try:
        return x in consts
    except TypeError as exc:  # unhashable values cannot occur from JSON scalars; be safe
        raise _EvalError(str(exc)) from None


def _eval_py(node: tuple, values: Mapping[Path, Any]) -> Any:
    kind = node[0]
    if kind == "const":
        return node[1]
    if kind == "field":
        return values[node[1]]
    if kind == "not":
        return not _truthy(_eval_py(node[1], values))
    if kind == "neg":
        return _py_unary(operator.neg, _eval_py(node[1], values))
    if kind == "pos":
        return _py_unary(operator.pos, _eval_py(node[1], values))
    if kind == "bin":
        return _py_binop(node[1], _eval_py(node[2], values), _eval_py(node[3], values))
    if kind == "and":
        for sub in node[1]:
            if not _truthy(_eval_py(sub, values)):
                return False
        return True
    if kind == "or":
        for sub in node[1]:
            if _truthy(_eval_py(sub, values)):
                return True
        return False
    if kind == "cmp":
        left = _eval_py(node[1], values)
        for op, rhs in node[2]:
            right = _eval_py(rhs, values)
            if not _truthy(_py_binop(op, left, right)):
                return False
            left = right
        return True
    if kind == "in":
        found = _py_in(_eval_py(node[1], values), node[2])
        return not found if node[3] else found
    raise AssertionError(kind)


def _py_unary(fn: Callable[[Any], Any], v: Any) -> Any:
    try:
        return fn(v)
    except TypeError as exc:
        raise _EvalError(str(exc)) from None


# ----------------------------------------------------------------------------------- vector eval
def _is_numeric(a: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype.kind in "fb"
    return isinstance(a, (float, bool))


def _as_object(a: Any, n: int) -> np.ndarray:
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            return a
        out = np.empty(n, dtype=object)
        out[:] = a.tolist()
        return out
    out = np.empty(n, dtype=object)
    out[:] = [a] * n
    return out


def _truthy_np(val: Any, n: int) -> np.ndarray:
    if isinstance(val, np.ndarray):
        if val.dtype == bool:
            return val
        if val.dtype.kind == "f":
            return val != 0
        return np.fromiter((bool(v) for v in val), dtype=bool, count=n)
    return np.full(n, bool(val))


def _elementwise(op: str, a: Any, b: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = _as_object(a, n), _as_object(b, n)
    out = np.empty(n, dtype=object)
    err = np.zeros(n, dtype=bool)
    fn = _PY_OPS[op]
    for i in range(n):
        try:
            out[i] = _checked(fn(xs[i], ys[i]))
        except (TypeError, ZeroDivisionError, OverflowError, ValueError, _EvalError):
            out[i] = False
            err[i] = True
    return out, err


def _np_binop(op: str, a: Any, b: Any, n: int) -> tuple[Any, np.ndarray]:
    if not (_is_numeric(a) and _is_numeric(b)):
        return _elementwise(op, a, b, n)
    if op in ("==", "!=", "<", "<=", ">", ">="):
        return _PY_OPS[op](a, b), np.zeros(n, dtype=bool)
    fa = a.astype(np.float64) if isinstance(a, np.ndarray) else np.float64(a)
    fb = b.astype(np.float64) if isinstance(b, np.ndarray) else np.float64(b)
    if op == "/":
        res, bad = fa / fb, np.broadcast_to(fb == 0, (n,))
    elif op == "//":
        res, bad = np.floor_divide(fa, fb), np.broadcast_to(fb == 0, (n,))
    elif op == "%":
        res, bad = np.mod(fa, fb), np.broadcast_to(fb == 0, (n,))
    elif op == "**":
        # Python raises for 0 ** negative and for a negative base with a fractional exponent
        res = np.power(fa, fb)
        bad = np.broadcast_to(np.isnan(res) | ((fa == 0) & (fb < 0)), (n,))
    else:
        res, bad = _PY_OPS[op](fa, fb), np.zeros(n, dtype=bool)
    res = np.broadcast_to(np.asarray(res, dtype=np.float64), (n,))
    err = bad | ~np.isfinite(res)
    return np.where(err, 0.0, res), err


def _eval_np(node: tuple, cols: Mapping[Path, np.ndarray], n: int) -> tuple[Any, np.ndarray]:
    kind = node[0]
    none = np.zeros(n, dtype=bool)
    if kind == "const":
        return node[1], none
    if kind == "field":
        return cols[node[1]], none
    if kind == "not":
        val, err = _eval_np(node[1], cols, n)
        return ~_truthy_np(val, n), err
    if kind in ("neg", "pos"):
        val, err = _eval_np(node[1], cols, n)
        if _is_numeric(val):
            f = val.astype(np.float64) if isinstance(val, np.ndarray) else float(val)
            return (-f if kind == "neg" else +f), err
        fn = operator.neg if kind == "neg" else operator.pos
        out = np.empty(n, dtype=object)
        err = err.copy()
        for i, v in enumerate(_as_object(val, n)):
            try:
                out[i] = fn(v)
            except TypeError:
                out[i], err[i] = False, True
        return out, err
    if kind == "bin":
        a, ea = _eval_np(node[2], cols, n)
        b, eb = _eval_np(node[3], cols, n)
        val, e = _np_binop(node[1], a, b, n)
        return val, ea | eb | e
    if kind in ("and", "or"):
        # Short-circuit: a later operand's error only counts where it would be evaluated.
        result = np.full(n, kind == "and")
        err = np.zeros(n, dtype=bool)
        undecided = np.ones(n, dtype=bool)
        for sub in node[1]:
            val, e = _eval_np(sub, cols, n)
            t = _truthy_np(val, n)
            err |= undecided & e
            undecided &= ~e
            if kind == "and":
                stop = undecided & ~t
                result[stop] = False
            else:
                stop = undecided & t
                result[stop] = True
            undecided &= ~stop
        return result, err
    if kind == "cmp":
        left, err = _eval_np(node[1], cols, n)
        result = np.ones(n, dtype=bool)
        live = np.ones(n, dtype=bool)
        for op, rhs in node[2]:
            right, er = _eval_np(rhs, cols, n)
            val, e = _np_binop(op, left, right, n)
            err = err | (live & (er | e))
            t = _truthy_np(val, n) & ~e
            result &= t | ~live
            live &= t & ~er
            left = right
        return result & ~err, err
    if kind == "in":
        val, err = _eval_np(node[1], cols, n)
        consts = node[2]
        if isinstance(val, np.ndarray) and val.dtype.kind in "fb":
            numeric = [float(c) for c in consts if not isinstance(c, str)]
            found = np.isin(val.astype(np.float64), np.array(numeric, dtype=np.float64))
        else:
            found = np.fromiter((v in consts for v in _as_object(val, n)), dtype=bool, count=n)
        return (~found if node[3] else found), err
    raise AssertionError(kind)
