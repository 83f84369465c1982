"""Testing in production: A/B experiments, canary and blue/green releases, shadow releases.

Pure core, no Kafka and no asyncio:

* :mod:`.hashing` — GrowthBook-compatible FNV-1a hashing (v1, v2);
* :mod:`.assignment` — unit → variant (weights, coverage, layers, sticky buckets,
  exposure events); imports nothing beyond the standard library, so the SDK can use it;
* :mod:`.stats` — streaming sufficient statistics and the A/B analysis (Welch, z-test,
  lifts, chance to beat, SRM, power, anytime-valid confidence sequences, Holm / BH);
* :mod:`.outcomes` — joins outcomes to variants through the unit;
* :mod:`.canary` — the canary / blue-green ladder and its decisions
  (``schemas/decision.v1.json`` is the decisions-topic schema);
* :mod:`.shadow` — primary vs shadow comparison by prediction id;
* :mod:`.report` — text and HTML reports.
"""
