"""Multi-host start-up: the same command on every host, `jax.distributed` joins them.

Explicit flags (--coordinator_address, --num_processes, --process_id) win; without
them, `jax.distributed.initialize()` autodetects TPU pods and SLURM jobs of more
than one task. A single host needs nothing.
"""
from __future__ import annotations

import os

import jax


def _in_multihost_cluster() -> bool:
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  # Cloud TPU VMs list every worker of the slice here.
  return len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  explicit = coordinator_address is not None
  if not explicit and not _in_multihost_cluster():
    return
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu' or not _has_accelerator_plugin():
    # CPU processes exchange collectives through gloo (tests, CPU clusters).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def _has_accelerator_plugin() -> bool:
  import importlib.util
  return any(importlib.util.find_spec(m) for m in ('jax_cuda12_plugin', 'jax_cuda13_plugin',
                                                  'libtpu'))
