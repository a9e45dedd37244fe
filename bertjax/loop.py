"""The training loop shared by pre-training and fine-tuning.

A job (`train.py`, `finetune.py`) builds its data, steps and objective and hands
them over as a `Job`; `restore_or_start` picks the state to begin from and `run`
does the rest: step, log (metrics.jsonl, TensorBoard, progress bar), evaluate and
keep-best hooks, NaN stop, checkpoints, preemption (SIGTERM) and Ctrl-C, profile.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from bertjax import checkpoint, preemption, reporting
from bertjax.errors import UserError

Metrics = dict[str, float]


@dataclasses.dataclass
class Job:
  """What a training job hands the loop."""
  train_step: Callable[[Any, Any], tuple[Any, Any]]  # (state, batch) -> (state, metrics)
  next_batch: Callable[[int], Any]  # step -> the global batch (an iterator's next, or rows of step)
  summarise: Callable[[list, float, int], Metrics]  # (step metrics, seconds, steps) -> logged
  show: Callable[[Metrics], dict[str, str]]  # logged training metrics -> progress-bar fields
  total_steps: int
  log_every: int
  checkpoint_every: int
  data_iterator: Any = None  # saved beside the state when the data order is not the step's
  eval_every: int = 0  # 0: no evaluation inside the loop
  evaluate: Callable[[Any], Metrics] | None = None  # state -> metrics, logged as eval_*
  after_eval: Callable[[int, Any, Metrics], None] | None = None  # e.g. keep the best weights
  evaluate_last_step: bool = False  # also evaluate at `total_steps` (fine-tuning's best)
  show_eval: Callable[[Metrics], dict[str, str]] = lambda metrics: {}  # eval -> bar fields


def restore_or_start(mngr, abstract_state, start_fresh: Callable[[Any], Any], workdir: str,
                     data_iterator=None) -> tuple[Any, int]:
  """(state, first step): the latest readable checkpoint, else `start_fresh(params)`
  with the params of a params-only checkpoint (`bertjax import`) or None."""
  state = checkpoint.restore(mngr, abstract_state, data_iterator)
  if state is None:
    return start_fresh(None), 0
  if 'step' not in state:  # imported weights: fresh optimizer, step 0
    return start_fresh(state['params']), 0
  start = int(state['step'])
  reporting.log(f'resumed from step {start} in {workdir}')
  return state, start


def run(job: Job, state, start: int, *, workdir: str, mngr, writer: reporting.MetricsWriter,
        profile: bool = False):
  """Trains from step `start` to `job.total_steps`; returns the final state, or None
  when SIGTERM stopped the run (after saving it). Ctrl-C saves, then raises
  KeyboardInterrupt."""
  bar = reporting.progress_bar(start, job.total_steps)
  pending, last_time, last_logged = [], time.perf_counter(), start
  postfix = {}
  with preemption.guard(mngr) as stop_requested:
    for step in range(start, job.total_steps):
      if profile and step == start + 2:  # after compilation
        jax.profiler.start_trace(os.path.join(workdir, 'profile'))
      state, metrics = job.train_step(state, job.next_batch(step))
      pending.append(metrics)
      done = step + 1
      if profile and done == start + 5:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        reporting.log(f'profile of steps {start + 3}-{done} in {workdir}/profile')
      if done % job.log_every == 0 or done == job.total_steps:
        summary = job.summarise(jax.device_get(pending), time.perf_counter() - last_time,
                                done - last_logged)
        # A non-finite gradient writes NaN weights while its loss is still finite.
        if not (np.isfinite(summary['loss']) and np.isfinite(summary.get('grad_norm', 0.0))):
          bar.close()
          raise UserError(_nan_message(mngr, summary['loss'], done, last_logged))
        writer.write(done, summary)
        postfix.update(job.show(summary))
        bar.set_postfix(postfix)
        pending, last_time, last_logged = [], time.perf_counter(), done
      if job.evaluate and (
          (job.eval_every and done % job.eval_every == 0 and done != job.total_steps)
          or (job.evaluate_last_step and done == job.total_steps)):
        results = job.evaluate(state)
        writer.write(done, results, prefix='eval_')
        postfix.update(job.show_eval(results))
        bar.set_postfix(postfix)
        if job.after_eval:
          job.after_eval(done, state, results)
      stop = stop_requested(done)
      if done % job.checkpoint_every == 0 or done == job.total_steps or stop:
        writer.flush()  # on object storage the log uploads in batches: cover this step
        checkpoint.save(mngr, done, state, job.data_iterator)
      bar.update(1)
      if stop:
        bar.close()
        checkpoint.wait(mngr)
        reporting.log(f'{stop}: saved step {done}; re-run the same command to resume')
        if stop == preemption.INTERRUPTED:
          raise KeyboardInterrupt
        return None
  bar.close()
  checkpoint.wait(mngr)
  return state


def _nan_message(mngr, loss: float, step: int, last_finite: int) -> str:
  """Names the last checkpoint written before the loss was last seen finite: later
  ones may already hold the NaN."""
  checkpoint.wait(mngr)
  saved = sorted(mngr.all_steps())
  good = [s for s in saved if s <= last_finite]
  fix = 'Lower --config.optim.learning_rate or check the data'
  if not saved:
    return (f'the loss became {loss} by step {step}, before any checkpoint was saved: nothing '
            f'was kept to resume from. {fix}')
  later = [s for s in saved if s not in good]
  suspect = (f'; step{"s" if len(later) > 1 else ""} {", ".join(map(str, later))} may already '
             'hold the NaN') if later else ''
  kept = f'the last good checkpoint (step {good[-1]}) is kept' if good else \
      'no checkpoint was saved before the loss was last seen finite'
  return f'the loss became {loss} by step {step}; {kept}{suspect}. {fix}'
