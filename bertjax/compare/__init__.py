"""`bertjax compare`: masking sweeps, kept apart from the library.

sweep    pre-train one model per masking variant under one budget, evaluate and
         fine-tune each alike (`sweep.run`)
report   the sweep's table, plots and CSV, from what the sweep measured
"""
