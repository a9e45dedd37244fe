"""JAX's persistent compilation cache for `bertjax train` and `bertjax bench`.

A restarted run (a resume, a preempted job, the next benchmark) finds its compiled
step on disk instead of compiling it again. Where it lives, first match wins:
- `BERTJAX_COMPILATION_CACHE=DIR` (a local path or a gs:// URL; `off` turns it off);
- `JAX_COMPILATION_CACHE_DIR`, JAX's own variable, left to JAX as MaxText and the
  NVIDIA JAX-Toolbox use it;
- `$XDG_CACHE_HOME/bertjax/jax`, i.e. `~/.cache/bertjax/jax`: per user, not per
  workdir, so every workdir and `bench` share compiled steps of the same shape.
JAX keeps only computations that took at least a second to compile
(`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`), which leaves out the many tiny
ones; on GPUs it also keeps XLA's autotuning results beside them.
"""
from __future__ import annotations

import os

ENV = 'BERTJAX_COMPILATION_CACHE'
OFF = ('off', 'none', '0', 'false')


def default_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'bertjax', 'jax')


def cache_dir() -> str | None:
  """The directory the cache uses in this process, or None when it is off."""
  chosen = os.environ.get(ENV)
  if chosen is not None:
    return None if chosen.strip().lower() in OFF else chosen
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or default_dir()


def setup() -> str | None:
  """Points JAX at the cache; call before anything is compiled. Returns the directory."""
  import jax
  directory = cache_dir()
  if directory is not None:
    jax.config.update('jax_compilation_cache_dir', directory)
  return directory


class HitCounter:
  """Counts the persistent-cache hits and misses JAX reports from now on."""

  def __init__(self):
    from jax import monitoring
    self.hits = self.misses = 0

    def listen(event: str, **_):
      if event == '/jax/compilation_cache/cache_hits':
        self.hits += 1
      elif event == '/jax/compilation_cache/cache_misses':
        self.misses += 1
    monitoring.register_event_listener(listen)
