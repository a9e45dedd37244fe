"""`bertjax compare`: masking sweeps, kept apart from the library.

sweep    pre-train one model per masking variant under one budget, evaluate and
         fine-tune each alike (`sweep.run`)
report   the sweep's table, plots and CSV, from what the sweep measured
"""
from __future__ import annotations

# Callers check sweep configs as `bertjax.compare.validate`, as when the sweep was the
# module `bertjax.compare`.
from bertjax.compare.sweep import validate  # noqa: F401
