"""Where a run reports: the metrics log, TensorBoard events and a progress bar.

Only process 0 writes; other processes get a writer that does nothing, so the
train loop calls it unconditionally. The workdir may be local or a URL: the metrics
go through jsonl_log (WORKDIR/metrics.jsonl locally, segments under WORKDIR/metrics/
on object storage, which cannot append) and the events through tensorboard_sink. On
a URL both upload at most every FLUSH_SECONDS and at every `flush`, which the loop
calls before each checkpoint, so what a checkpoint covers is logged.
"""
from __future__ import annotations

import sys

import jax
import tqdm

from bertjax import jsonl_log, storage
from bertjax.tensorboard_sink import TensorBoardSink

# The workdir's names for them (workdir.py lists the whole layout).
METRICS_LOG = 'metrics'  # metrics.jsonl, or metrics/NNNNNN.jsonl on object storage
TENSORBOARD = 'tensorboard'
FLUSH_SECONDS = 30.0


class MetricsWriter:
  """Logs one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    root = storage.as_path(workdir)
    self._log = jsonl_log.JsonlLog(root, METRICS_LOG, flush_secs=FLUSH_SECONDS)
    self._tb = TensorBoardSink(root / TENSORBOARD, flush_secs=FLUSH_SECONDS)

  def write(self, step: int, metrics: dict[str, float], prefix: str = '') -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._log.write(record)
    self._tb.write(step, {k: v for k, v in record.items() if k != 'step'})

  def flush(self) -> None:
    if self.enabled:
      self._log.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._log.close()
      self._tb.close()


def progress_bar(start: int, total: int):
  """A tqdm bar over steps (step/total, rate, ETA); silent on processes > 0."""
  return tqdm.tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
                   disable=jax.process_index() != 0, file=sys.stdout, smoothing=0.1)


def log(message: str) -> None:
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stdout)
