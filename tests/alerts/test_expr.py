"""The invariant expression language: what it rejects, what it means, and batch == one-by-one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prodlens.invariants.expr import ERROR, FALSE, SKIP, TRUE, Expression, ExpressionError


@pytest.mark.parametrize("text, needle", [
    ("__import__('os').system('true')", "function calls are not allowed"),
    ("features.age.bit_length()", "function calls are not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("[x for x in features]", "ListComp is not allowed"),
    ("1 if features.a else 2", "IfExp is not allowed"),
    ("features.a ** features.b", "exponent of ** must be a number literal"),
    ("features.a ** 100", "at most 16"),
    ("features.a == None", "None is not allowed"),
    ("features.flag == true", "use True"),
    ("features.a is None", "is / is not are not supported"),
    ("features.a in features.b", "literal tuple or list"),
    ("features[0] > 1", "string literal key"),
    ("features.a >", "invalid syntax"),
    ("~features.a", "operator ~ is not allowed"),
    ("features.a @ features.b", "MatMult"),
    ("", "non-empty"),
    ("x > 1e999", "non-finite"),
])
def test_rejects_everything_outside_the_language(text, needle):
    with pytest.raises(ExpressionError) as info:
        Expression.parse(text)
    assert needle in str(info.value)


def test_fields_and_subscripts():
    e = Expression.parse('features["is-new"] == True and output.score >= 0.5 and latency_ms < 100')
    assert e.fields == (("features", "is-new"), ("output", "score"), ("latency_ms",))


@pytest.mark.parametrize("text, event, expected", [
    ("features.refund <= features.amount", {"features": {"refund": 5, "amount": 10}}, TRUE),
    ("features.refund <= features.amount", {"features": {"refund": 50, "amount": 10}}, FALSE),
    ("features.refund <= features.amount", {"features": {"refund": 5}}, SKIP),
    ("features.refund <= features.amount", {"features": {"refund": None, "amount": 1}}, SKIP),
    ("features.a / features.b > 1", {"features": {"a": 1, "b": 0}}, ERROR),
    ("features.a % features.b > 1", {"features": {"a": 1, "b": 0}}, ERROR),
    ("features.a < 1", {"features": {"a": "x"}}, ERROR),
    ("features.a == 1", {"features": {"a": "1"}}, FALSE),  # "1" is not 1, as in Python
    ("features.a == 1", {"features": {"a": True}}, TRUE),  # True == 1, as in Python
    ("0 <= output.score < 1", {"output": {"score": 1.0}}, FALSE),
    ("0 <= output.score < 1", {"output": {"score": 0.0}}, TRUE),
    ('output.label in ("a", "b")', {"output": {"label": "b"}}, TRUE),
    ('output.label not in ("a", "b")', {"output": {"label": "b"}}, FALSE),
    ("features.a in (1, 2)", {"features": {"a": 2.0}}, TRUE),
    ("features.a > 0 or features.b / 0 > 1", {"features": {"a": 1, "b": 1}}, TRUE),   # short circuit
    ("features.a > 0 and features.b / 0 > 1", {"features": {"a": -1, "b": 1}}, FALSE),
    ("features.a > 0 and features.b / 0 > 1", {"features": {"a": 1, "b": 1}}, ERROR),
    ("not features.flag", {"features": {"flag": False}}, TRUE),
    ("-features.a ** 2 == -4", {"features": {"a": 2}}, TRUE),
    ("features.a ** 0.5 > 0", {"features": {"a": -4}}, ERROR),  # complex in Python: an error here
    ("features.a * 1e300 * 1e300 > 0", {"features": {"a": 1}}, ERROR),  # overflow to inf
    ("features.a // 2 == -2", {"features": {"a": -3}}, TRUE),  # floor division as in Python
    ("features.a % 3 == 2", {"features": {"a": -1}}, TRUE),
])
def test_semantics_one_event_and_batch_agree(text, event, expected):
    e = Expression.parse(text)
    assert e.evaluate(event) == expected
    applies, holds, error = e.evaluate_rows([event])
    batch = SKIP if not applies[0] else ERROR if error[0] else TRUE if holds[0] else FALSE
    assert batch == expected


# ----------------------------------------------------------------------------- property test
_values = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, 2, -3, 0.5, 1e300, -0.0]),
    st.integers(-5, 5), st.floats(-10, 10, allow_nan=False), st.sampled_from(["a", "b", ""]))
_leaf = st.one_of(
    st.sampled_from(["features.x", "features.y", "output.score"]),
    st.sampled_from(["0", "1", "2.5", "-1", '"a"', "True", "False"]))


def _extend(children):
    bin_ops = st.sampled_from(["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or"])
    return st.one_of(
        st.tuples(children, bin_ops, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"(not {c})"),
        children.map(lambda c: f"(-{c})"),
        children.map(lambda c: f"({c} ** 2)"),
        children.map(lambda c: f'({c} in (1, "a", True))'),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} < {t[1]} <= {t[2]})"),
    )


_exprs = st.recursive(_leaf, _extend, max_leaves=8)
_events = st.lists(st.fixed_dictionaries({
    "features": st.fixed_dictionaries({"x": _values, "y": _values}),
    "output": st.fixed_dictionaries({"score": _values})}), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_exprs, events=_events)
def test_vectorised_equals_one_by_one(text, events):
    e = Expression.parse(text)
    applies, holds, error = e.evaluate_rows(events)
    for i, event in enumerate(events):
        one = e.evaluate(event)
        batch = SKIP if not applies[i] else ERROR if error[i] else TRUE if holds[i] else FALSE
        assert batch == one, (text, event)


def test_numeric_batch_is_vectorised_and_correct():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(size=500)
    b[::50] = 0.0
    events = [{"features": {"a": float(x), "b": float(y)}} for x, y in zip(a, b)]
    e = Expression.parse("features.a / features.b > 0.5 or features.a > 2")
    applies, holds, error = e.evaluate_rows(events)
    assert applies.all()
    with np.errstate(all="ignore"):
        ratio = a / b
    expected_error = (b == 0) & ~(a > 2)
    np.testing.assert_array_equal(error, expected_error)
    np.testing.assert_array_equal(holds, ~expected_error & ((ratio > 0.5) | (a > 2)))
    assert math.isclose(holds.mean(), np.mean(~expected_error & ((ratio > 0.5) | (a > 2))))
