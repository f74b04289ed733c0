"""``robusta demo``: the whole flow on generated events (``demo``: the run; ``datagen``: the
deterministic event generator the demo, tests and benchmarks share)."""
