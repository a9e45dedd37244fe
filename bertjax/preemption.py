"""SIGTERM and Ctrl-C as requests to checkpoint and stop.

SIGTERM is how TPU VMs and SLURM preempt jobs. Inside `guard()` it only marks a
request; the train loop polls `stop_requested(step)` once a step, saves, and exits
cleanly. The first Ctrl-C (SIGINT) does the same; a second one exits at once.

With several processes, checkpoints are collective, so all must stop at the same
step: JAX's preemption service (started by `jax.distributed.initialize()`) catches
SIGTERM on any process and agrees on a step, read through orbax's
`CheckpointManager.reached_preemption(step)`. A single process keeps a local flag.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import jax

PREEMPTED, INTERRUPTED = 'preempted', 'interrupted'


@contextlib.contextmanager
def guard(mngr):
  """Yields `stop_requested(step)`: None, PREEMPTED or INTERRUPTED (Ctrl-C)."""
  if threading.current_thread() is not threading.main_thread():
    yield lambda step: None  # signal handlers can only be installed from the main thread
    return
  requests = []
  multiprocess = jax.process_count() > 1

  def on_sigint(*_):
    if requests:  # the second Ctrl-C: stop now, whatever is running
      print('bertjax: interrupted again; exiting without saving', file=sys.stderr, flush=True)
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
      return
    requests.append(INTERRUPTED)
    print('\nbertjax: interrupted; saving a checkpoint after this step (Ctrl-C again to '
          'exit at once)', file=sys.stderr, flush=True)
    if multiprocess:  # tell every process, through JAX's SIGTERM handler
      os.kill(os.getpid(), signal.SIGTERM)

  previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
  if not multiprocess:
    # With several processes, JAX's preemption service owns SIGTERM.
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM,
                                             lambda *_: requests.append(PREEMPTED))

  def stop_requested(step: int) -> str | None:
    if multiprocess:
      if not mngr.reached_preemption(step):
        return None
      return INTERRUPTED if INTERRUPTED in requests else PREEMPTED
    return requests[0] if requests else None

  try:
    yield stop_requested
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
