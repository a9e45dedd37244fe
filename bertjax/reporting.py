"""Where a run reports: metrics.jsonl, TensorBoard events and a progress bar.

Only process 0 writes; other processes get a writer that does nothing, so the
train loop calls it unconditionally.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import tqdm


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # no TensorFlow needed
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._tb = SummaryWriter(logdir=os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict[str, float], prefix: str = '') -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for k, v in record.items():
      if k != 'step':
        self._tb.add_scalar(k, v, global_step=step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def progress_bar(start: int, total: int):
  """A tqdm bar over steps (step/total, rate, ETA); silent on processes > 0."""
  return tqdm.tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
                   disable=jax.process_index() != 0, file=sys.stdout, smoothing=0.1)


def log(message: str) -> None:
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stdout)
