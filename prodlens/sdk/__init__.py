"""The prodlens SDK: instrument a Python app in a few lines::

    from prodlens.sdk import Telemetry

    tel = Telemetry("kafka:9092", salt=os.environ["PRODLENS_UNIT_SALT"])
    pid = tel.log_prediction("churn", "v7", label="stay", score=0.18,
                             features={"tenure_months": 14}, segment={"country": "US"},
                             unit_id=user_id, latency_ms=12.4)
    tel.log_feedback(pid, "label", "churn")        # later, when the truth is known
    tel.log_outcome(user_id, "revenue", 19.99)     # business outcome of the unit

``AsyncTelemetry`` offers the same methods as coroutines for asyncio apps. Events
follow ``schemas/*.v1.json`` and travel in columnar batch envelopes.
"""

from prodlens.sdk.batching import Batcher, Envelope, build_columns, message_key
from prodlens.sdk.events import EventBuilder, new_id
from prodlens.sdk.privacy import Privacy
from prodlens.sdk.settings import DEFAULT_TOPICS, Settings
from prodlens.sdk.spool import Spool
from prodlens.sdk.stats import Stats
from prodlens.sdk.telemetry import AsyncTelemetry, Telemetry

__all__ = ["AsyncTelemetry", "Batcher", "DEFAULT_TOPICS", "Envelope", "EventBuilder", "Privacy",
           "Settings", "Spool", "Stats", "Telemetry", "build_columns", "message_key", "new_id"]
