"""Invariants: checks on the prediction stream that need no ground truth.

Declared in prodlens.yaml under the top-level ``invariants:`` section, one list
per configured model (:func:`parse_invariants_section`). Every
invariant has a unique ``name`` (it becomes the ``invariant`` label of
``prodlens_invariant_violations_total``), a ``kind``, an optional
``description`` and an optional ``where:`` filter (an expression; only events
for which it is true are checked). Field paths are ``features.<name>``,
``output.label|score|value|probabilities``, ``segment.<key>`` or a top-level
event field (``latency_ms``, ``role``, ``unit_id``...); ``features["odd-name"]``
for names that are not identifiers. Durations: ``30s``, ``5m``, ``1h`` or seconds.

.. code-block:: yaml

    invariants:
      churn:                           # a model declared under models:
        # Per-event checks: each violating event counts.
        - name: is_new_is_boolean
          kind: type                 # boolean | number | integer | string
          field: features.is_new
          type: boolean              # the string "true" is a violation
          # allow_null: true         # default; null is left to not_null
        - name: age_in_range
          kind: range
          field: features.age
          min: 0                     # either bound may be left out
          max: 120
          # exclusive_min: false, exclusive_max: false
        - name: plan_known
          kind: enum
          field: features.plan
          values: [free, pro, enterprise]     # type-strict: true is not 1, "1" is not 1
        - name: score_present
          kind: not_null
          fields: [output.score, features.tenure]
        # Cross-field rule in the safe expression language (see prodlens.invariants.expr):
        - name: refund_not_above_amount
          kind: rule
          rule: features.refund <= features.amount
          where: features.refund > 0           # optional filter, on any kind
          on_missing: skip                     # skip (default) | violate
        # Two versions (or models) agree on the same prediction_id, per window:
        - name: shadow_agrees
          kind: agreement
          reference: {version: v7}             # model (default: this one) / version / role
          candidate: {role: shadow}
          field: output.label                  # default output.label
          tolerance: 0                         # numeric fields: |a - b| <= tolerance agrees
          min_agreement: 0.95                  # at least 95 % of pairs agree
          min_pairs: 100                       # fewer pairs in a window: no verdict
          pair_timeout: 5m                     # unmatched predictions wait this long (event time)
          max_pending: 100000                  # bound of the pairing buffer
        # Stability ("cars in video shall not flicker"):
        - name: no_flicker
          kind: stability
          unit: unit_id                        # default unit_id
          field: output.label                  # or a score with threshold: 0.5
          max_flips: 2
          within: 10s
          max_units: 100000                    # bound of the per-unit state
        # Rare events: at most N (and/or a share) per window:
        - name: few_huge_refunds
          kind: rare
          when: features.refund > 10000
          max_count: 5
          # max_rate: 0.001
        # Business bounds on outcome metrics (or a prediction field), per window:
        - name: revenue_plausible
          kind: business
          metric: revenue                      # outcomes topic; or field: output.value
          aggregate: sum                       # sum | mean | count
          lower: 1000                          # suspiciously low ...
          upper: 5000000                       # ... or suspiciously high (double billing?)
          # min_count: 0                       # default 0 for sum/count, 1 for mean

Kinds are evaluated by :class:`InvariantEvaluator` (batch, vectorised where the
kind allows) per event-time window × (model, version, segment).
"""

from .evaluator import ALL, InvariantEvaluator, Tally, WindowResult, default_segment_label
from .expr import ERROR, FALSE, SKIP, TRUE, Expression, ExpressionError
from .sample import BottomK
from .spec import (KINDS, AgreementCheck, BusinessBound, EnumCheck, Invariant, InvariantConfigError,
                   ModelInvariants, NotNullCheck, RangeCheck, RareBound, RuleCheck, Selector, StabilityCheck,
                   TypeCheck, parse_invariant, parse_invariants, parse_invariants_section)

__all__ = [
    "ALL", "InvariantEvaluator", "Tally", "WindowResult", "default_segment_label",
    "ERROR", "FALSE", "SKIP", "TRUE", "Expression", "ExpressionError", "BottomK",
    "KINDS", "AgreementCheck", "BusinessBound", "EnumCheck", "Invariant", "InvariantConfigError",
    "ModelInvariants", "NotNullCheck", "RangeCheck", "RareBound", "RuleCheck", "Selector",
    "StabilityCheck", "TypeCheck", "parse_invariant", "parse_invariants", "parse_invariants_section",
]
