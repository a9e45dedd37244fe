"""SIGTERM as a request to checkpoint and stop: how TPU VMs and SLURM preempt jobs.

Inside `guard()`, SIGTERM only sets a flag; the train loop polls it once a step,
saves, and exits cleanly. With several processes the flag is agreed on by all (any
one preempted stops all at the same step), since checkpoints are collective.
"""
from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np


# With several processes, agreeing costs a collective: do it every this many steps.
MULTIHOST_POLL_EVERY = 10


@contextlib.contextmanager
def guard():
  """Yields `preempted(step)`: True once SIGTERM arrived here (or on any process)."""
  received = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield lambda step: False  # signal handlers can only be installed from the main thread
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: received.set())

  def preempted(step: int) -> bool:
    if jax.process_count() == 1:
      return received.is_set()
    if step % MULTIHOST_POLL_EVERY:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([received.is_set()]))
    return bool(np.any(flags))

  try:
    yield preempted
  finally:
    signal.signal(signal.SIGTERM, previous)
