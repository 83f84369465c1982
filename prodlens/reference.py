"""References: the distributions a model's windows are compared against.

A :class:`Reference` is a set of segment summaries (always including ``__all__``) for one
model, built from one of:

* a training data file, CSV or Parquet: :func:`build_reference` (read in record batches with
  pyarrow, so memory stays bounded by the summaries, not the file);
* a frozen range of window summaries: :func:`reference_from_windows` (merged; see the
  summaries' merge bounds);
* another live version (canary/shadow vs primary): pass that version's
  :class:`~prodlens.sketches.summary.WindowSummary` to ``compare`` directly, or freeze it
  with :func:`reference_from_windows`.

File format (JSON, versioned by ``format``)::

    {"format": "prodlens.reference.v1", "model": "churn", "version": null,
     "created_at": "2026-11-25T06:30:00+00:00",
     "source": {"kind": "file", "path": "train.parquet", "format": "parquet",
                "rows": 120000, "sha256": "..."},
     "spec": {...}, "count": 120000,
     "features": {"tenure_months": {"type": "numeric", ...}, "plan": {...}},
     "output": {"score": {...}}, "label": {...} | null,
     "segments": {"country=US": {"count": ..., "features": {...}, "output": {...}, "label": ...}}}

``features``/``output``/``label`` at the top level are the ``__all__`` segment. Numeric
summaries default to KLL k=800 here (rank error 0.0035) since a reference is built once.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from prodlens.sketches.categorical import OTHER, canonical_category
from prodlens.sketches.summary import ALL, KINDS, SegmentSummary, SummarySpec, WindowSummary

REFERENCE_FORMAT = "prodlens.reference.v1"
REFERENCE_K = 800
DEFAULT_SEGMENT_TOP_K = 20


def segment_key(attributes: Mapping[str, Any]) -> str:
    """Default segment key: ``name=value`` pairs sorted by name, comma-separated (``__all__``
    for no attributes). Values are canonicalised like categories (True -> "true")."""
    if not attributes:
        return ALL
    return ",".join(f"{k}={canonical_category(v)}" for k, v in sorted(attributes.items()))


@dataclass
class Reference:
    """Reference summaries of one model: ``segments[key]`` (``__all__`` always present)."""

    model: str
    segments: dict[str, SegmentSummary]
    spec: SummarySpec = field(default_factory=SummarySpec)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    source: dict = field(default_factory=dict)
    version: str | None = None

    def __post_init__(self) -> None:
        if ALL not in self.segments:
            combined = SegmentSummary(self.spec)
            for seg in self.segments.values():
                combined.merge(seg)
            self.segments[ALL] = combined

    @property
    def all(self) -> SegmentSummary:
        return self.segments[ALL]

    def segment(self, key: str) -> SegmentSummary | None:
        return self.segments.get(key)

    def to_dict(self) -> dict:
        top = self.all.to_dict()
        return {"format": REFERENCE_FORMAT, "model": self.model, "version": self.version,
                "created_at": self.created_at, "source": dict(self.source), "spec": self.spec.to_dict(),
                "count": top["count"], "features": top["features"], "output": top["output"],
                "label": top["label"],
                "segments": {k: self.segments[k].to_dict() for k in sorted(self.segments) if k != ALL}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Reference":
        if d.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"format: expected {REFERENCE_FORMAT!r}, got {d.get('format')!r}")
        for key in ("model", "features"):
            if key not in d:
                raise ValueError(f"{key}: missing from the reference")
        spec = SummarySpec.from_dict(d.get("spec") or {})
        segments = {ALL: SegmentSummary.from_dict({"count": d.get("count", 0), "features": d["features"],
                                                   "output": d.get("output") or {}, "label": d.get("label")}, spec)}
        for key, seg in (d.get("segments") or {}).items():
            segments[key] = SegmentSummary.from_dict(seg, spec)
        return cls(model=d["model"], segments=segments, spec=spec, created_at=d.get("created_at", ""),
                   source=dict(d.get("source") or {}), version=d.get("version"))

    def save(self, path: str | Path) -> None:
        save_reference(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        return load_reference(path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and self.to_dict() == other.to_dict()


def save_reference(reference: Reference, path: str | Path) -> None:
    """Write the reference as JSON (atomically: a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(reference.to_dict(), sort_keys=True, allow_nan=False))
    tmp.replace(path)


def load_reference(path: str | Path) -> Reference:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return Reference.from_dict(doc)


# -- from windows -----------------------------------------------------------------------------
def reference_from_windows(windows: Iterable[WindowSummary], model: str | None = None,
                           created_at: str | None = None) -> Reference:
    """Merge a frozen set of window summaries (same model) into a reference."""
    windows = list(windows)
    if not windows:
        raise ValueError("windows: need at least one window summary")
    first = windows[0]
    for w in windows:
        if w.model != (model or first.model):
            raise ValueError(f"model: window of {w.model!r} in a reference for {model or first.model!r}")
    version = first.version if all(w.version == first.version for w in windows) else None
    merged = WindowSummary(first.model, version, spec=first.spec)
    for w in windows:
        merged.merge(w if w.version == version else _with_version(w, version))
    n = len(windows)
    segments = {k: s.copy() for k, s in merged.segments.items()}
    ref = Reference(model=merged.model, segments=segments, spec=merged.spec,
                    source={"kind": "windows", "version": merged.version, "start": merged.start,
                            "end": merged.end, "windows": n},
                    version=merged.version)
    if created_at:
        ref.created_at = created_at
    return ref


def _with_version(w: WindowSummary, version: str | None) -> WindowSummary:
    c = w.copy()
    c.version = version
    return c


# -- from a training data file ---------------------------------------------------------------
@dataclass
class _Plan:
    features: dict[str, tuple[str, str | None]]   # field path -> (column, kind or None = infer)
    segments: dict[str, int]                      # segment attribute column -> top_k


def _file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    raise ValueError(f"path: {path.name} is neither CSV (.csv) nor Parquet (.parquet)")


def _kind_of(path: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("type")
    if value is not None and value not in KINDS:
        raise ValueError(f"{path}: kind must be one of {KINDS}, got {value!r}")
    return value


def _plan(config: Mapping[str, Any], columns: list[str]) -> _Plan:
    colset = set(columns)
    features: dict[str, tuple[str, str | None]] = {}

    def need(col: str, where: str) -> str:
        if col not in colset:
            raise ValueError(f"{where}: column {col!r} not in the file (columns: {', '.join(columns)})")
        return col

    segs_cfg = config.get("segments") or []
    segments: dict[str, int] = {}
    if isinstance(segs_cfg, Mapping):
        for name, opts in segs_cfg.items():
            segments[need(name, f"segments.{name}")] = int((opts or {}).get("top_k", DEFAULT_SEGMENT_TOP_K)) \
                if isinstance(opts, Mapping) else DEFAULT_SEGMENT_TOP_K
    else:
        for i, item in enumerate(segs_cfg):
            if isinstance(item, Mapping):
                segments[need(item["name"], f"segments[{i}]")] = int(item.get("top_k", DEFAULT_SEGMENT_TOP_K))
            else:
                segments[need(str(item), f"segments[{i}]")] = DEFAULT_SEGMENT_TOP_K

    used = set(segments)
    out_cfg = config.get("output") or {}
    for name in sorted(set(out_cfg) | {"score", "label", "value"}):
        spec = out_cfg.get(name)
        col = spec.get("column") if isinstance(spec, Mapping) else None
        path = f"output.{name}"
        if col is None:
            col = path if path in colset else None
        elif col not in colset:
            need(col, f"output.{name}.column")
        if col is not None:
            kind = _kind_of(path, spec) or ("categorical" if name == "label" else "numeric" if name in ("score", "value") else None)
            features[path] = (col, kind)
            used.add(col)

    label = config.get("label")
    if label is not None:
        if isinstance(label, str) and label not in KINDS:
            features["label"] = (need(label, "label"), None)
        elif isinstance(label, Mapping) and label.get("column"):
            features["label"] = (need(label["column"], "label.column"), _kind_of("label", label))
        elif "label" in colset:
            features["label"] = ("label", _kind_of("label", label))
        if "label" in features:
            used.add(features["label"][0])

    feats = config.get("features")
    if feats is None:
        for col in columns:
            if col not in used:
                features[f"features.{col}"] = (col, None)
    elif isinstance(feats, Mapping):
        for name, spec in feats.items():
            col = spec.get("column", name) if isinstance(spec, Mapping) else name
            features[f"features.{name}"] = (need(col, f"features.{name}"), _kind_of(f"features.{name}", spec))
    else:
        for i, item in enumerate(feats):
            if isinstance(item, str):
                features[f"features.{item}"] = (need(item, f"features[{i}]"), None)
            elif isinstance(item, Mapping) and "name" in item:
                col = item.get("column", item["name"])
                features[f"features.{item['name']}"] = (need(col, f"features[{i}]"),
                                                        _kind_of(f"features[{i}]", item))
            else:
                raise ValueError(f"features[{i}]: expected a name or {{name, type}}, got {item!r}")
    return _Plan(features, segments)


def _arrow_kind(arrow_type) -> str:
    import pyarrow.types as pat

    if pat.is_integer(arrow_type) or pat.is_floating(arrow_type) or pat.is_decimal(arrow_type):
        return "numeric"
    return "categorical"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_reference(path: str | Path, model_config: Mapping[str, Any], *,
                    segment_key_fn: Callable[[Mapping[str, Any]], str] = segment_key,
                    k: int = REFERENCE_K, batch_rows: int = 65_536,
                    created_at: str | None = None) -> Reference:
    """Summarise a training data file (CSV or Parquet) into a :class:`Reference`.

    ``model_config`` (the model's entry of prodlens.yaml, as a dict):

    * ``name`` (or ``model``): the model name (required);
    * ``features``: list of column names, mapping name -> kind, or list of
      ``{name, type, column}``; omitted = every column not used below, kind from the column type;
    * ``segments``: segment attribute columns (list, or mapping name -> ``{top_k}``); values
      beyond the top_k (default 20) most frequent fold into ``__other__`` per attribute;
    * ``output``: mapping name -> kind or ``{type, column}``; by default columns named
      ``output.score``, ``output.label``, ``output.value`` are used when present;
    * ``label``: ground-truth column name, or ``{column, type}``.

    Numeric columns are read as float64 (nulls missing); other column types are categorical.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    path = Path(path)
    model = model_config.get("name") or model_config.get("model")
    if not model:
        raise ValueError("name: the model config needs a model name")
    if not path.is_file():
        raise ValueError(f"path: {path} is not a file")
    fmt = _file_format(path)
    dataset = ds.dataset(str(path), format=fmt)
    schema = dataset.schema
    plan = _plan(model_config, schema.names)
    kinds: dict[str, str] = {}
    for fpath, (col, kind) in plan.features.items():
        kinds[fpath] = kind or _arrow_kind(schema.field(col).type)
    spec = SummarySpec(fields=kinds, infer=False, k=k,
                       capacity=int(model_config.get("capacity", SummarySpec().capacity)))

    # pass 1: the most frequent values of each segment attribute (rest -> __other__)
    keep: dict[str, set[str]] = {}
    if plan.segments:
        counts = {col: Counter() for col in plan.segments}
        for batch in dataset.to_batches(columns=list(plan.segments), batch_size=batch_rows):
            for col in plan.segments:
                vc = pc.value_counts(batch.column(col))
                for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
                    counts[col][canonical_category(v)] += c
        for col, top in plan.segments.items():
            keep[col] = {v for v, _ in sorted(counts[col].items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]}

    segments: dict[str, SegmentSummary] = {}
    rows = 0
    needed = sorted({col for col, _ in plan.features.values()} | set(plan.segments))
    for batch in dataset.to_batches(columns=needed, batch_size=batch_rows):
        n = batch.num_rows
        if n == 0:
            continue
        rows += n
        if plan.segments:
            attr_cols = {col: [canonical_category(v) for v in batch.column(col).to_pylist()] for col in plan.segments}
            keys = np.array([segment_key_fn({col: (vals[i] if vals[i] in keep[col] else OTHER)
                                             for col, vals in attr_cols.items()}) for i in range(n)], dtype=object)
            uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
            groups = [(str(u), np.flatnonzero(inverse == j)) for j, u in enumerate(uniq)]
        else:
            groups = [(ALL, None)]
        for fpath, (col, _) in plan.features.items():
            kind = kinds[fpath]
            arr = batch.column(col)
            if kind == "numeric":
                values = _numeric_column(arr, pc)
                for key, idx in groups:
                    seg = segments.setdefault(key, SegmentSummary(spec))
                    summary = seg.field(fpath, "numeric")
                    summary.update_many(values if idx is None else values[idx])
            else:
                for key, idx in groups:
                    seg = segments.setdefault(key, SegmentSummary(spec))
                    sub = arr if idx is None else arr.take(idx)
                    vc = pc.value_counts(sub)
                    seg.field(fpath, "categorical").update_counts(
                        dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
        for key, idx in groups:
            segments.setdefault(key, SegmentSummary(spec)).count += n if idx is None else idx.size
    if rows == 0:
        raise ValueError(f"path: {path} has no rows")
    ref = Reference(model=str(model), segments=segments, spec=spec,
                    source={"kind": "file", "path": str(path), "format": fmt, "rows": rows,
                            "sha256": _sha256(path)})
    if created_at:
        ref.created_at = created_at
    return ref


def _numeric_column(arr, pc) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) \
            or pa.types.is_decimal(arr.type):
        return np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    # strings in a column configured numeric: parse what parses, the rest is missing
    out = np.full(len(arr), np.nan)
    for i, v in enumerate(arr.to_pylist()):
        try:
            out[i] = float(v) if v is not None else np.nan
        except (TypeError, ValueError):
            pass
    return out
