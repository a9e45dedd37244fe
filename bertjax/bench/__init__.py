"""`bertjax bench`: harnesses that measure bertjax, kept apart from the library.

step         the config's jitted train step on synthetic batches: time, tokens/s, MFU
suite        several shapes of an experiment file in one run, each against its targets
peers        the same step in `transformers` (PyTorch eager, torch.compile, Flax)
flax_peer    the `transformers` 4.x Flax peer, run in a subprocess
finetune     bertjax and `transformers` fine-tuned alike, side by side (`--finetune`)
ablation     the step beside variants with one stage left out or changed (`--ablate`)
profile_summary  the top ops of a jax.profiler trace (`--profile DIR`, or run as a module)
data         input-pipeline tokens/s per masking kind on one core (`bertjax bench data`)
"""
