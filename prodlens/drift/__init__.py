"""Drift statistics against references, multiple-testing control and online change detection."""

from prodlens.drift.compare import VERDICTS, DriftResult, compare, flagged
from prodlens.drift.config import DEFAULT_THRESHOLDS, DriftConfig, FieldConfig, Thresholds
from prodlens.drift.detectors import (ChangePoint, DetectorBank, DetectorConfig, PageHinkley, SeriesDetector,
                                      window_series)
from prodlens.drift.fdr import benjamini_hochberg

__all__ = ["VERDICTS", "DEFAULT_THRESHOLDS", "ChangePoint", "DetectorBank", "DetectorConfig", "DriftConfig",
           "DriftResult", "FieldConfig", "PageHinkley", "SeriesDetector", "Thresholds", "benjamini_hochberg",
           "compare", "flagged", "window_series"]
