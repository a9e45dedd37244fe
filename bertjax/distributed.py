"""Multi-host start-up: the same command on every host, `jax.distributed` joins them.

Explicit flags (--coordinator_address, --num_processes, --process_id) win; without
them JAX's own cluster detectors decide (a Cloud TPU VM slice through the GCE
metadata server, a GKE TPU pod, a SLURM step, ...), so a pod never trains as N
independent single-host jobs. Then every process says what it sees, and a run that
sees fewer devices than its launch asked for stops before it trains slowly.
"""
from __future__ import annotations

import importlib.util
import os
import re

import jax

from bertjax.errors import UserError

# JAX devices per unit of the accelerator-type suffix: v2/v3 count TensorCores and
# JAX shows each core; v4/v5p count TensorCores too, but JAX shows one megacore
# device a chip (2 cores); v5e (v5litepod) and v6e count chips, one core each.
_TPU_DEVICES_PER_SUFFIX_UNIT = {'v2': 1, 'v3': 1, 'v4': 0.5, 'v5p': 0.5, 'v5litepod': 1,
                                'v5e': 1, 'v6e': 1}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, expect_devices: int | None = None) -> None:
  """Joins the cluster (if any), prints the device count line and checks it."""
  cluster = None if coordinator_address is not None else detected_cluster()
  if coordinator_address is not None or cluster is not None:
    if os.environ.get('JAX_PLATFORMS', '') == 'cpu' or not _has_accelerator_plugin():
      # CPU processes exchange collectives through gloo (tests, CPU clusters).
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    local_ids = slurm_local_device_ids(os.environ) if cluster == 'slurm' else None
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_ids)
  print(device_line(), flush=True)
  expected, source = ((expect_devices, '--expect_devices') if expect_devices is not None
                      else expected_devices(cluster, os.environ))
  check_devices(jax.device_count(), expected, source)


def detected_cluster() -> str | None:
  """The name of the cluster JAX's detectors find ('slurm', 'gcetpu', ...), or None.

  A SLURM step of one task is no cluster: JAX would pin it to the GPU at
  SLURM_LOCALID and leave the node's other GPUs idle.
  """
  # JAX keeps its detectors private; these are the ones jax.distributed.initialize()
  # itself tries, in its order, skipping the opt-in ones as it does.
  from jax._src import clusters
  env = next((e for e in clusters.ClusterEnv._cluster_types
              if not e.opt_in_only_method and e.is_env_present()), None)
  if env is None or (env.name == 'slurm' and int(os.environ['SLURM_NTASKS']) == 1):
    return None
  return env.name


def slurm_local_device_ids(env) -> list[int] | None:
  """The GPUs a SLURM task drives; None keeps JAX's choice, the one at SLURM_LOCALID.

  JAX's choice is right for one task per GPU on a node whose tasks all see all its
  GPUs (launch/gpu_slurm.sbatch). With --gpus-per-task SLURM narrows each task's
  CUDA_VISIBLE_DEVICES to its own GPUs, numbered from 0; with one task per node the
  task drives every GPU of the node.
  """
  if 'SLURM_GPUS_PER_TASK' in env:
    return list(range(_slurm_count(env['SLURM_GPUS_PER_TASK'])))
  nodes = _slurm_nodes(env)
  if nodes is not None and int(env['SLURM_NTASKS']) == nodes and 'SLURM_GPUS_ON_NODE' in env:
    return list(range(_slurm_count(env['SLURM_GPUS_ON_NODE'])))
  return None


def expected_devices(cluster: str | None, env) -> tuple[int | None, str]:
  """How many devices the launch asked for, and where that number comes from."""
  if cluster == 'slurm' or 'SLURM_JOB_ID' in env:
    return _slurm_expected_gpus(env)
  accelerator = env.get('TPU_ACCELERATOR_TYPE')
  if accelerator is None and cluster == 'gcetpu':
    from jax._src.clusters import cloud_tpu_cluster
    text, status = cloud_tpu_cluster.get_metadata('accelerator-type')
    accelerator = text if status == 200 else None
  if accelerator is None:
    return None, ''
  per_slice = tpu_devices(accelerator)
  if per_slice is None:
    return None, ''
  slices = env.get('MEGASCALE_NUM_SLICES')
  if slices is None and cluster == 'gcetpu':  # multislice GCE TPUs list it in tpu-env
    from jax._src.clusters import cloud_tpu_cluster
    slices = cloud_tpu_cluster.get_tpu_env_value('MEGASCALE_NUM_SLICES')
  slices = int(slices or 1)
  return per_slice * slices, f'TPU accelerator type {accelerator} x {slices} slice(s)'


def tpu_devices(accelerator_type: str) -> int | None:
  """JAX devices of one slice of `accelerator_type` ('v5p-256' -> 128); None if unknown."""
  match = re.fullmatch(r'(v\d+[a-z]*)-(\d+)', accelerator_type.strip())
  if not match or match.group(1) not in _TPU_DEVICES_PER_SUFFIX_UNIT:
    return None
  return int(int(match.group(2)) * _TPU_DEVICES_PER_SUFFIX_UNIT[match.group(1)])


def _slurm_expected_gpus(env) -> tuple[int | None, str]:
  tasks, nodes = int(env.get('SLURM_NTASKS', '1')), _slurm_nodes(env)
  if 'SLURM_GPUS_PER_TASK' in env:
    return (_slurm_count(env['SLURM_GPUS_PER_TASK']) * tasks,
            f'SLURM: {tasks} tasks x SLURM_GPUS_PER_TASK={env["SLURM_GPUS_PER_TASK"]}')
  for per_node in ('SLURM_GPUS_PER_NODE', 'SLURM_GPUS_ON_NODE'):
    if per_node in env and nodes is not None:
      return (_slurm_count(env[per_node]) * nodes,
              f'SLURM: {nodes} nodes x {per_node}={env[per_node]}')
  if 'SLURM_GPUS' in env:
    return _slurm_count(env['SLURM_GPUS']), f'SLURM_GPUS={env["SLURM_GPUS"]}'
  return None, ''


def _slurm_nodes(env) -> int | None:
  for name in ('SLURM_STEP_NUM_NODES', 'SLURM_JOB_NUM_NODES', 'SLURM_NNODES'):
    if name in env:
      return int(env[name])
  return None


def _slurm_count(value: str) -> int:
  """'8', 'h100:8' or 'gpu:h100:8' -> 8 (SLURM's GPU counts may name the type)."""
  return int(value.split('(')[0].rsplit(':', 1)[-1])


def device_line() -> str:
  return (f'process {jax.process_index()}: {jax.process_count()} processes x '
          f'{jax.local_device_count()} local devices = {jax.device_count()} global devices '
          f'({jax.devices()[0].platform})')


def check_devices(found: int, expected: int | None, source: str) -> None:
  if expected is not None and found < expected:
    raise UserError(
        f'JAX sees {found} devices but the launch asked for {expected} ({source}); check '
        'that every host joined and its accelerator plugin is installed (pip install '
        f"'bertjax[gpu]' or '[tpu]'), or pass --expect_devices {found} to train on fewer")


def _has_accelerator_plugin() -> bool:
  return any(importlib.util.find_spec(m) for m in ('jax_cuda12_plugin', 'jax_cuda13_plugin',
                                                  'libtpu'))
