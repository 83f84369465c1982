"""Mergeable, JSON-serialisable summaries and samplers (pure core: no Kafka, no asyncio)."""

from prodlens.sketches.categorical import OTHER, CategoricalSummary
from prodlens.sketches.ddsketch import DDSketch
from prodlens.sketches.numeric import NumericSummary, kll_rank_error
from prodlens.sketches.sampling import PrioritySampler, StratifiedReservoir
from prodlens.sketches.summary import ALL, SegmentSummary, SummarySpec, WindowSummary, summary_from_dict

__all__ = ["ALL", "OTHER", "CategoricalSummary", "DDSketch", "NumericSummary", "PrioritySampler",
           "SegmentSummary", "StratifiedReservoir", "SummarySpec", "WindowSummary", "kll_rank_error",
           "summary_from_dict"]
