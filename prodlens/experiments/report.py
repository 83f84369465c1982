"""Experiment reports: pure functions from result objects to text or HTML.

* :func:`experiment_text` / :func:`experiment_html` — an A/B result
  (:class:`~.stats.ExperimentResult`): per metric and variant n, rate or mean with
  its interval, absolute and relative lift with intervals, chance to beat the
  baseline, p-value (raw and adjusted), SRM status and the decision;
* :func:`canary_text` / :func:`canary_html` — a canary :class:`~.canary.Decision`;
* :func:`shadow_text` / :func:`shadow_html` — :class:`~.shadow.ShadowResult` per key;
* :func:`render_text` / :func:`render_html` — any of those in one report; the HTML
  is one self-contained page (inline CSS, no scripts, no external assets);
* :func:`experiment_samples` / :func:`canary_samples` / :func:`shadow_samples` — the
  same figures as Prometheus gauge samples ``(name, labels, value)``.

Nothing here computes statistics or touches files: the CLI writes the strings.
"""

from __future__ import annotations

import html
import io
import math
from typing import Iterable, Mapping, NamedTuple

from rich import box
from rich.console import Console
from rich.table import Table

from .canary import Decision
from .shadow import ShadowResult
from .stats import PROPORTION, Estimate, ExperimentResult

_DASH = "–"


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _num(x, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if _ok(x) else _DASH


def _pct(x, digits: int = 1, signed: bool = False) -> str:
    if not _ok(x):
        return _DASH
    return f"{x * 100:+.{digits}f}%" if signed else f"{x * 100:.{digits}f}%"


def _pvalue(p) -> str:
    if not _ok(p):
        return _DASH
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _interval(e: Estimate, fmt) -> str:
    if not (_ok(e.ci_low) and _ok(e.ci_high)):
        return fmt(e.value)
    return f"{fmt(e.value)} [{fmt(e.ci_low)}, {fmt(e.ci_high)}]"


def _value_fmt(kind: str):
    return (lambda x: _pct(x, 2)) if kind == PROPORTION else (lambda x: _num(x, 4))


def _lift_fmt(kind: str):
    return (lambda x: _pct(x, 2, signed=True) + "pt" if _ok(x) else _DASH) if kind == PROPORTION else \
        (lambda x: f"{x:+.4g}" if _ok(x) else _DASH)


def _experiment_rows(result: ExperimentResult) -> list[dict]:
    """The table rows both renderers share (strings, plus a verdict for colouring)."""
    rows = []
    for m in result.metrics:
        vfmt, lfmt = _value_fmt(m.kind), _lift_fmt(m.kind)
        for v in m.variants:
            c = v.comparison
            verdict = ""
            if c is not None and v.significant:
                verdict = "better" if (c.absolute.value > 0) == m.higher_is_better else "worse"
            rows.append({
                "metric": m.metric if v.variant == m.variants[0].variant else "",
                "variant": v.variant + (" (baseline)" if c is None else ""),
                "n": f"{v.n:,}",
                "value": _interval(v.estimate, vfmt),
                "abs_lift": _interval(c.absolute, lfmt) if c else "",
                "rel_lift": _interval(c.relative, lambda x: _pct(x, 1, signed=True)) if c else "",
                "chance": _pct(c.chance_to_beat, 1) if c else "",
                "p": (f"{_pvalue(c.p_value)} ({_pvalue(v.adjusted_p_value)})" if c else ""),
                "verdict": verdict,
            })
    return rows


_COLUMNS = [("metric", "metric"), ("variant", "variant"), ("n", "n"), ("value", "rate / mean [CI]"),
            ("abs_lift", "abs. lift [CI]"), ("rel_lift", "rel. lift [CI]"), ("chance", "chance to beat"),
            ("p", "p (adjusted)")]


def _srm_line(result: ExperimentResult) -> str:
    s = result.srm
    obs = ", ".join(f"{k} {v:,}" for k, v in s.observed.items())
    if s.status == "insufficient_data":
        return f"SRM: insufficient data (exposures: {obs})"
    return f"SRM: {s.status} (chi2 = {_num(s.chi2)}, p = {_pvalue(s.p_value)}, alarm below {s.alpha:g}; exposures: {obs})"


def _method_line(result: ExperimentResult) -> str:
    seq = (f"sequential (anytime-valid, tuned for n = {result.sequential_tuning_n:,.0f})"
           if result.sequential_tuning_n else "fixed horizon")
    return f"alpha {result.alpha:g}, {seq}, {result.correction} correction across variants × metrics"


def _render(renderable_fn, width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    renderable_fn(console)
    return buf.getvalue()


def experiment_text(result: ExperimentResult, width: int = 220) -> str:
    """Plain-text report of one A/B experiment."""
    def draw(console: Console) -> None:
        console.print(f"Experiment {result.experiment} — baseline {result.baseline}", markup=False)
        console.print(_method_line(result), markup=False)
        console.print(_srm_line(result), markup=False)
        table = Table(box=box.SIMPLE_HEAVY, show_lines=False)
        for _, title in _COLUMNS:
            table.add_column(title, no_wrap=True)
        table.add_column("", no_wrap=True)
        for r in _experiment_rows(result):
            table.add_row(*[r[k] for k, _ in _COLUMNS], r["verdict"])
        console.print(table)
        console.print(f"Decision: {result.decision}", markup=False)
        for reason in result.reasons:
            console.print(f"  - {reason}", markup=False)
    return _render(draw, width)


def canary_text(decision: Decision, width: int = 220) -> str:
    """Plain-text summary of a canary decision and its per-metric verdicts."""
    def draw(console: Console) -> None:
        console.print(f"Canary {decision.ladder}: {decision.canary} vs {decision.baseline} — "
                      f"{decision.action.upper()} (status {decision.status}, step {decision.step + 1}, "
                      f"traffic {_pct(decision.traffic, 0)})", markup=False)
        table = Table(box=box.SIMPLE_HEAVY)
        for title in ("metric", "baseline n", "canary n", "baseline", "canary", "harm [CI]", "tolerance", "verdict"):
            table.add_column(title, no_wrap=True)
        for m in decision.metrics:
            table.add_row(*_canary_cells(m))
        if decision.metrics:
            console.print(table)
        if decision.latency:
            console.print(_latency_line(decision.latency), markup=False)
        for reason in decision.reasons:
            console.print(f"  - {reason}", markup=False)
    return _render(draw, width)


def _canary_cells(m: Mapping) -> list[str]:
    fmt = _value_fmt(m["kind"])
    harm_fmt = (lambda x: _pct(x, 2, signed=True)) if m["relative"] else (lambda x: f"{x:+.4g}" if _ok(x) else _DASH)
    lo, hi = m.get("harm_ci") or [None, None]
    harm = harm_fmt(m["harm"]) if m.get("harm") is not None else _DASH
    if lo is not None and hi is not None:
        harm += f" [{harm_fmt(lo)}, {harm_fmt(hi)}]"
    tol = _pct(m["tolerance"], 2) if m["relative"] else _num(m["tolerance"])
    return [m["metric"], f"{m['baseline_n']:,}", f"{m['canary_n']:,}",
            fmt(m["baseline_mean"]) if m["baseline_mean"] is not None else _DASH,
            fmt(m["canary_mean"]) if m["canary_mean"] is not None else _DASH, harm, tol, m["verdict"]]


def _latency_line(lat: Mapping) -> str:
    q = f"p{lat['quantile'] * 100:g}"
    if lat.get("verdict") == "insufficient_data":
        return f"latency {q}: not enough samples (baseline {lat['baseline_n']}, canary {lat['canary_n']})"
    return (f"latency {q}: baseline {_num(lat['baseline'])} ms, canary {_num(lat['canary'])} ms, ratio "
            f"{_num(lat['ratio'], 3)} (lower bound {_num(lat['ratio_lower_bound'], 3)}, tolerance "
            f"{lat['tolerance']:g}) — {lat['verdict']}")


def _shadow_rows(results: Mapping[str, ShadowResult]) -> tuple[list[str], list[list[str]]]:
    header = ["key", "pairs", "disagreement / diff [CI]", "|diff| p50 / p99", "latency p95 primary / shadow",
              "labelled", "accuracy or MAE primary", "accuracy or MAE shadow", "shadow − primary [CI], p"]
    rows = []
    for key, r in results.items():
        lat = r.latency
        latency = f"{_num(lat['primary']['p95'])} / {_num(lat['shadow']['p95'])} ms"
        if r.task == "classification":
            agree = _interval(r.disagreement, lambda x: _pct(x, 2)) if r.disagreement else _DASH
            absd = ""
            acc_p = _interval(r.accuracy_primary, lambda x: _pct(x, 1)) if r.labelled else _DASH
            acc_s = _interval(r.accuracy_shadow, lambda x: _pct(x, 1)) if r.labelled else _DASH
            d = r.accuracy_diff
            delta = (f"{_interval(d, lambda x: _pct(x, 2, signed=True))}, p = {_pvalue(d.p_value)}"
                     if d is not None else _DASH)
        else:
            agree = _interval(r.diff, lambda x: f"{x:+.4g}" if _ok(x) else _DASH) if r.diff else _DASH
            absd = f"{_num(r.abs_diff['p50'])} / {_num(r.abs_diff['p99'])}" if r.abs_diff else _DASH
            acc_p = _interval(r.mae_primary, _num) if r.mae_primary and r.labelled else _DASH
            acc_s = _interval(r.mae_shadow, _num) if r.mae_shadow and r.labelled else _DASH
            d = r.mae_diff
            delta = f"{_interval(d, lambda x: f'{x:+.4g}')}, p = {_pvalue(d.p_value)}" if d is not None else _DASH
        rows.append([key, f"{r.pairs:,}", agree, absd, latency, f"{r.labelled:,}", acc_p, acc_s, delta])
    return header, rows


def shadow_text(results: Mapping[str, ShadowResult], width: int = 220) -> str:
    """Plain-text table of shadow comparisons, one row per (model, segment) key."""
    header, rows = _shadow_rows(results)

    def draw(console: Console) -> None:
        table = Table(box=box.SIMPLE_HEAVY, title="Shadow comparison")
        for h in header:
            table.add_column(h, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    return _render(draw, width)


def render_text(experiment: ExperimentResult | None = None, canary: Decision | None = None,
                shadow: Mapping[str, ShadowResult] | None = None, width: int = 220) -> str:
    """All given sections, as plain text."""
    parts = []
    if experiment is not None:
        parts.append(experiment_text(experiment, width))
    if canary is not None:
        parts.append(canary_text(canary, width))
    if shadow:
        parts.append(shadow_text(shadow, width))
    return "\n".join(parts)


# ------------------------------------------------------------------------------ HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2328;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.75rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #d0d7de;padding:.35rem .7rem;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td.l,th.l{text-align:left}
tr.better td{background:#dafbe1}tr.worse td{background:#ffebe9}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;font-weight:600;font-size:.85rem}
.ok{background:#dafbe1;color:#116329}.bad{background:#ffebe9;color:#a40e26}.neutral{background:#eaeef2;color:#424a53}
.meta{color:#57606a;font-size:.85rem}ul{margin:.3rem 0}
"""

_GOOD = {"significant_win", "promote", "ok", "non_inferior"}
_BAD = {"significant_loss", "srm_alarm", "rollback", "mismatch", "worse"}


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _badge(label: str) -> str:
    cls = "ok" if label in _GOOD else "bad" if label in _BAD else "neutral"
    return f'<span class="badge {cls}">{_e(label)}</span>'


def _html_table(header: Iterable[str], rows: Iterable[Iterable[str]], left: int = 2,
                row_classes: Iterable[str] | None = None) -> str:
    header = list(header)
    classes = list(row_classes) if row_classes is not None else None
    out = ["<table><thead><tr>"]
    out += [f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for j, row in enumerate(rows):
        cls = f' class="{_e(classes[j])}"' if classes and classes[j] else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>'
                                           for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def experiment_html_section(result: ExperimentResult) -> str:
    rows = _experiment_rows(result)
    parts = [f"<h2>Experiment {_e(result.experiment)} {_badge(result.decision)}</h2>",
             f'<p class="meta">baseline {_e(result.baseline)} · {_e(_method_line(result))}</p>',
             f"<p>{_badge(result.srm.status)} {_e(_srm_line(result))}</p>",
             _html_table([t for _, t in _COLUMNS], ([r[k] for k, _ in _COLUMNS] for r in rows),
                         row_classes=[r["verdict"] for r in rows]),
             "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in result.reasons) + "</ul>"]
    return "\n".join(parts)


def canary_html_section(decision: Decision) -> str:
    parts = [f"<h2>Canary {_e(decision.ladder)}: {_e(decision.canary)} vs {_e(decision.baseline)} "
             f"{_badge(decision.action)}</h2>",
             f'<p class="meta">status {_e(decision.status)} · step {decision.step + 1} · traffic '
             f"{_e(_pct(decision.traffic, 0))}</p>"]
    if decision.metrics:
        parts.append(_html_table(["metric", "baseline n", "canary n", "baseline", "canary", "harm [CI]",
                                  "tolerance", "verdict"], (_canary_cells(m) for m in decision.metrics), left=1,
                                 row_classes=["worse" if m["verdict"] == "worse" else "" for m in decision.metrics]))
    if decision.latency:
        parts.append(f"<p>{_e(_latency_line(decision.latency))}</p>")
    parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in decision.reasons) + "</ul>")
    return "\n".join(parts)


def shadow_html_section(results: Mapping[str, ShadowResult]) -> str:
    header, rows = _shadow_rows(results)
    return "<h2>Shadow comparison</h2>\n" + _html_table(header, rows, left=1)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{_e(title)}</h1>\n{body}\n</body></html>\n")


def experiment_html(result: ExperimentResult, title: str | None = None) -> str:
    """Self-contained HTML report of one A/B experiment."""
    return _page(title or f"prodlens experiment {result.experiment}", experiment_html_section(result))


def canary_html(decision: Decision, title: str | None = None) -> str:
    return _page(title or f"prodlens canary {decision.ladder}", canary_html_section(decision))


def shadow_html(results: Mapping[str, ShadowResult], title: str = "prodlens shadow comparison") -> str:
    return _page(title, shadow_html_section(results))


def render_html(experiment: ExperimentResult | None = None, canary: Decision | None = None,
                shadow: Mapping[str, ShadowResult] | None = None, title: str = "prodlens report") -> str:
    """All given sections on one self-contained HTML page."""
    sections = []
    if experiment is not None:
        sections.append(experiment_html_section(experiment))
    if canary is not None:
        sections.append(canary_html_section(canary))
    if shadow:
        sections.append(shadow_html_section(shadow))
    return _page(title, "\n".join(sections))


# ------------------------------------------------------------------------------ Prometheus samples


class Sample(NamedTuple):
    """One gauge value: the stream layer sets ``Gauge(name, labels.keys()).labels(**labels).set(value)``."""

    name: str
    labels: dict
    value: float


def _f(x) -> float:
    return float(x) if isinstance(x, (int, float)) and x is not None else math.nan


def _one_hot(name: str, labels: dict, key: str, current: str, values: Iterable[str]) -> list[Sample]:
    # every known value is written (0 or 1) so a stale state never lingers on a dashboard
    return [Sample(name, {**labels, key: v}, 1.0 if v == current else 0.0) for v in values]


EXPERIMENT_DECISIONS = ("srm_alarm", "insufficient_data", "significant_win", "significant_loss",
                        "no_significant_difference")


def experiment_samples(result: ExperimentResult) -> list[Sample]:
    """Gauges for one A/B result (NaN where a figure is undefined, e.g. the baseline's lift)."""
    e = {"experiment": result.experiment}
    out = [Sample("prodlens_experiment_exposures", {**e, "variant": v}, float(n))
           for v, n in result.exposures.items()]
    out.append(Sample("prodlens_experiment_srm_p_value", e, _f(result.srm.p_value)))
    out.append(Sample("prodlens_experiment_srm_alarm", e, 1.0 if result.srm.alarm else 0.0))
    out += _one_hot("prodlens_experiment_decision", e, "decision", result.decision, EXPERIMENT_DECISIONS)
    for m in result.metrics:
        for v in m.variants:
            lab = {**e, "metric": m.metric, "variant": v.variant}
            out += [Sample("prodlens_experiment_units", lab, float(v.n)),
                    Sample("prodlens_experiment_mean", lab, _f(v.estimate.value)),
                    Sample("prodlens_experiment_mean_ci_low", lab, _f(v.estimate.ci_low)),
                    Sample("prodlens_experiment_mean_ci_high", lab, _f(v.estimate.ci_high))]
            c = v.comparison
            if c is None:
                continue
            out += [Sample("prodlens_experiment_lift_absolute", lab, _f(c.absolute.value)),
                    Sample("prodlens_experiment_lift_absolute_ci_low", lab, _f(c.absolute.ci_low)),
                    Sample("prodlens_experiment_lift_absolute_ci_high", lab, _f(c.absolute.ci_high)),
                    Sample("prodlens_experiment_lift_relative", lab, _f(c.relative.value)),
                    Sample("prodlens_experiment_lift_relative_ci_low", lab, _f(c.relative.ci_low)),
                    Sample("prodlens_experiment_lift_relative_ci_high", lab, _f(c.relative.ci_high)),
                    Sample("prodlens_experiment_p_value", lab, _f(c.p_value)),
                    Sample("prodlens_experiment_p_value_adjusted", lab, _f(v.adjusted_p_value)),
                    Sample("prodlens_experiment_chance_to_beat", lab, _f(c.chance_to_beat)),
                    Sample("prodlens_experiment_significant", lab, 1.0 if v.significant else 0.0)]
    return out


def canary_samples(decision: Decision) -> list[Sample]:
    """Gauges for the latest canary decision."""
    from .canary import ACTIONS, STATUSES

    lad = {"ladder": decision.ladder, "baseline": decision.baseline, "canary": decision.canary}
    out = [Sample("prodlens_canary_traffic", lad, float(decision.traffic)),
           Sample("prodlens_canary_step", lad, float(decision.step)),
           Sample("prodlens_canary_decision_timestamp_seconds", lad, float(decision.timestamp))]
    out += _one_hot("prodlens_canary_decision", lad, "action", decision.action, ACTIONS)
    out += _one_hot("prodlens_canary_status", lad, "status", decision.status, STATUSES)
    for m in decision.metrics:
        lab = {**lad, "metric": m["metric"]}
        lo, hi = m.get("harm_ci") or (None, None)
        out += [Sample("prodlens_canary_harm", lab, _f(m.get("harm"))),
                Sample("prodlens_canary_harm_ci_low", lab, _f(lo)),
                Sample("prodlens_canary_harm_ci_high", lab, _f(hi)),
                Sample("prodlens_canary_tolerance", lab, _f(m["tolerance"]))]
    if decision.latency:
        out.append(Sample("prodlens_canary_latency_ratio", lad, _f(decision.latency.get("ratio"))))
    return out


def _key_labels(key: str) -> dict:
    model, _, segment = key.partition("|")
    return {"model": model, "segment": segment or "__all__"}


def shadow_samples(results: Mapping[str, ShadowResult], labels: Mapping[str, dict] | None = None) -> list[Sample]:
    """Gauges per shadow key (``model|segment`` keys become ``model`` and ``segment`` labels,
    unless ``labels`` gives a key's labels explicitly)."""
    out = []
    for key, r in results.items():
        lab = dict(labels[key]) if labels is not None and key in labels else _key_labels(key)
        out.append(Sample("prodlens_shadow_pairs", lab, float(r.pairs)))
        out.append(Sample("prodlens_shadow_labelled", lab, float(r.labelled)))
        for side in ("primary", "shadow"):
            for q in ("p50", "p95", "p99"):
                out.append(Sample("prodlens_shadow_latency_ms", {**lab, "side": side, "quantile": q},
                                  _f(r.latency[side][q])))
        if r.task == "classification":
            d = r.disagreement
            out += [Sample("prodlens_shadow_disagreement_rate", lab, _f(d.value)),
                    Sample("prodlens_shadow_disagreement_rate_ci_low", lab, _f(d.ci_low)),
                    Sample("prodlens_shadow_disagreement_rate_ci_high", lab, _f(d.ci_high))]
            for side, est in (("primary", r.accuracy_primary), ("shadow", r.accuracy_shadow)):
                out.append(Sample("prodlens_shadow_accuracy", {**lab, "side": side}, _f(est.value)))
        else:
            out += [Sample("prodlens_shadow_diff_mean", lab, _f(r.diff.value)),
                    Sample("prodlens_shadow_diff_mean_ci_low", lab, _f(r.diff.ci_low)),
                    Sample("prodlens_shadow_diff_mean_ci_high", lab, _f(r.diff.ci_high))]
            for q in ("p50", "p90", "p99"):
                out.append(Sample("prodlens_shadow_abs_diff", {**lab, "quantile": q}, _f(r.abs_diff[q])))
            for side, est in (("primary", r.mae_primary), ("shadow", r.mae_shadow)):
                out.append(Sample("prodlens_shadow_mae", {**lab, "side": side}, _f(est.value)))
    return out
