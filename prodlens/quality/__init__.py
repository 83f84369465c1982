"""Model quality from feedback: the pure core (no Kafka, no asyncio).

* :mod:`.intervals` — :class:`Estimate` (value, n, interval, method, sufficient) and interval formulas;
* :mod:`.classification`, :mod:`.regression`, :mod:`.feedback` — mergeable accumulators per window ×
  (model, version, segment);
* :mod:`.join` — prediction ⨝ feedback state by prediction_id (pending predictions, early feedback, orphans);
* :mod:`.windows` — window states, routing of joined rows, merged longer views;
* :mod:`.cbpe` — estimated quality before labels arrive (confidence-based performance estimation).
"""

from .cbpe import CBPEReference, CBPEWindow
from .classification import ClassificationAccumulator, confusion_from_counts, label_key
from .feedback import FeedbackAccumulator
from .intervals import Estimate, t_interval, t_interval_from_sums, wilson
from .join import EarlyFeedback, FeedbackJoin, Matches, OrphanLog, PendingPredictions, segment_key, window_start
from .regression import RegressionAccumulator
from .results import MetricSet
from .windows import ModelSpec, QualityWindows, WindowQuality, merge_all

__all__ = ["CBPEReference", "CBPEWindow", "ClassificationAccumulator", "EarlyFeedback", "Estimate",
           "FeedbackAccumulator", "FeedbackJoin", "Matches", "MetricSet", "ModelSpec", "OrphanLog",
           "PendingPredictions", "QualityWindows", "RegressionAccumulator", "WindowQuality", "confusion_from_counts",
           "label_key", "merge_all", "segment_key", "t_interval", "t_interval_from_sums", "wilson", "window_start"]
