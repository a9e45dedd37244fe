"""Cluster start-up without a cluster: two local CPU processes join through
jax.distributed as a SLURM step and as a Cloud TPU VM slice (whose workers JAX finds
through a fake GCE metadata server), and a launch that asked for more devices stops."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from bertjax import distributed
from bertjax.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')

# Initialize, then a collective over both processes, so "joined" means joined.
JOIN = """
import os, sys
if os.environ.get('FAKE_TPU_VM'):
  import jax
  # JAX_FORCE_TPU_INIT made jax treat this host as a TPU VM; with no TPU chips it also
  # set TPU_SKIP_MDS_QUERY, which a real TPU VM does not have.
  os.environ.pop('TPU_SKIP_MDS_QUERY')
import jax, numpy as np
from jax.experimental import multihost_utils
from bertjax import cli, distributed
if sys.argv[1:]:
  sys.exit(cli.main(sys.argv[1:]))
distributed.initialize()
total = multihost_utils.process_allgather(np.array([jax.process_index() + 1])).sum()
print('initialized', jax.distributed.is_initialized(), 'sum', total)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _base_env():
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('SLURM_', 'TPU_', 'MEGASCALE_', 'JAX_COORDINATOR'))}
  return dict(env, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
              XLA_FLAGS='--xla_force_host_platform_device_count=2',
              JAX_COORDINATOR_PORT=str(_free_port()))


def _run_two(envs, *cli_args):
  procs = [subprocess.Popen([sys.executable, '-c', JOIN, *cli_args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for env in envs]
  results = [p.communicate(timeout=120) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, results)]


def _slurm_envs(**extra):
  base = _base_env()
  return [dict(base, SLURM_JOB_ID='4242', SLURM_NTASKS='2', SLURM_PROCID=str(i),
               SLURM_LOCALID=str(i), SLURM_STEP_NODELIST='127.0.0.1',
               SLURM_STEP_NUM_NODES='1', **extra) for i in range(2)]


def test_slurm_step_of_two_tasks_joins_and_counts_devices():
  for i, (code, out, err) in enumerate(_run_two(_slurm_envs())):
    assert code == 0, err[-3000:]
    assert f'process {i}: 2 processes x 2 local devices = 4 global devices (cpu)' in out
    assert 'initialized True sum 3' in out


def _train_args(tmp_path):
  return ('train', '--config', QUICKSTART + ':local', '--workdir', str(tmp_path / 'run'))


def test_slurm_launch_that_asked_for_more_devices_stops(tmp_path):
  for code, out, err in _run_two(_slurm_envs(SLURM_GPUS_ON_NODE='8'), *_train_args(tmp_path)):
    assert code == 2, err[-3000:]
    assert err.strip().splitlines() == [
        'bertjax: error: JAX sees 4 devices but the launch asked for 8 (SLURM: 1 nodes x '
        "SLURM_GPUS_ON_NODE=8); check that every host joined and its accelerator plugin is "
        "installed (pip install 'bertjax[gpu]' or '[tpu]'), or pass --expect_devices 4 to "
        'train on fewer']
  assert not (tmp_path / 'run').exists()


def test_multihost_mesh_that_leaves_devices_out_is_one_line(tmp_path):
  runs = _run_two(_slurm_envs(), *_train_args(tmp_path), '--config.mesh.data=2')
  for code, _, err in runs:
    assert code == 2, err[-3000:]
    assert err.strip().splitlines() == [
        "bertjax: error: mesh {'data': 2, 'fsdp': 1, 'tensor': 1} uses 2 of the 4 devices of "
        'this 2-process run; size it to all of them, e.g. --config.mesh.data=-1']
  assert not (tmp_path / 'run').exists()


class _Metadata(http.server.BaseHTTPRequestHandler):
  """The attributes a GCE TPU VM's metadata server gives JAX's detector."""
  attributes: dict

  def do_GET(self):
    prefix = '/computeMetadata/v1/instance/attributes/'
    key = self.path[len(prefix):] if self.path.startswith(prefix) else None
    value = self.attributes.get(key)
    if self.headers.get('Metadata-Flavor') != 'Google' or value is None:
      self.send_response(404)
      self.end_headers()
      return
    self.send_response(200)
    self.end_headers()
    self.wfile.write(value.encode())

  def log_message(self, *args):
    pass


@pytest.fixture
def tpu_vm_envs():
  """Two TPU VM workers, each with its own fake metadata server; yields a function of
  the accelerator type that returns their environments."""
  servers = []

  def envs(accelerator_type):
    base = dict(_base_env(), JAX_FORCE_TPU_INIT='1', FAKE_TPU_VM='1')
    out = []
    for worker in range(2):
      handler = type('Worker', (_Metadata,), {'attributes': {
          'agent-worker-number': str(worker),
          'worker-network-endpoints': '127.0.0.1,127.0.0.1',
          'accelerator-type': accelerator_type,
          'tpu-env': f"ACCELERATOR_TYPE: '{accelerator_type}'\n"}})
      server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
      threading.Thread(target=server.serve_forever, daemon=True).start()
      servers.append(server)
      out.append(dict(base, GCE_METADATA_IP=f'127.0.0.1:{server.server_port}'))
    return out

  yield envs
  for server in servers:
    server.shutdown()


def test_tpu_vm_slice_found_through_the_metadata_server_joins(tpu_vm_envs):
  # v4-8: 8 TensorCores, 4 megacore chips, 4 JAX devices: what the two workers have.
  for i, (code, out, err) in enumerate(_run_two(tpu_vm_envs('v4-8'))):
    assert code == 0, err[-3000:]
    assert f'process {i}: 2 processes x 2 local devices = 4 global devices (cpu)' in out
    assert 'initialized True sum 3' in out


def test_tpu_slice_smaller_than_its_type_stops(tpu_vm_envs, tmp_path):
  for code, _, err in _run_two(tpu_vm_envs('v5p-16'), *_train_args(tmp_path)):
    assert code == 2, err[-3000:]
    assert err.startswith('bertjax: error: JAX sees 4 devices but the launch asked for 8 '
                          '(TPU accelerator type v5p-16 x 1 slice(s))')


def test_no_cluster_single_process_checks_expect_devices(tmp_path):
  env = dict(_base_env(), XLA_FLAGS='--xla_force_host_platform_device_count=4')
  run = subprocess.run([sys.executable, '-m', 'bertjax', *_train_args(tmp_path),
                        '--expect_devices', '8'], env=env, capture_output=True, text=True,
                       timeout=120)
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stdout.startswith('process 0: 1 processes x 4 local devices = 4 global devices')
  assert 'JAX sees 4 devices but the launch asked for 8 (--expect_devices)' in run.stderr


def test_mesh_that_does_not_divide_the_devices_is_one_line(tmp_path):
  run = subprocess.run([sys.executable, '-m', 'bertjax', *_train_args(tmp_path),
                        '--config.mesh.data=-1', '--config.mesh.fsdp=3'],
                       env=dict(_base_env(), XLA_FLAGS='--xla_force_host_platform_device_count=8'),
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 2, run.stderr[-3000:]
  assert run.stderr.strip().splitlines() == [
      "bertjax: error: 8 devices do not divide by the fixed mesh axes "
      "{'data': -1, 'fsdp': 3, 'tensor': 1}"]
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('accelerator_type, devices', [
    ('v5p-256', 128), ('v4-8', 4), ('v3-8', 8), ('v5litepod-16', 16), ('v6e-256', 256),
    ('v9z-8', None)])
def test_tpu_devices_from_the_accelerator_type(accelerator_type, devices):
  assert distributed.tpu_devices(accelerator_type) == devices


@pytest.mark.parametrize('env, expected', [
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '32', 'SLURM_GPUS_PER_TASK': '1'}, 32),
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '32', 'SLURM_JOB_NUM_NODES': '4',
      'SLURM_GPUS_PER_NODE': 'h100:8'}, 32),
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '4', 'SLURM_NNODES': '4',
      'SLURM_GPUS_ON_NODE': '8'}, 32),
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '2', 'SLURM_GPUS': 'gpu:16'}, 16),
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '2'}, None),
])
def test_slurm_expected_devices(env, expected):
  assert distributed.expected_devices('slurm', env)[0] == expected


def test_slurm_tasks_drive_their_own_gpus():
  one_per_gpu = {'SLURM_NTASKS': '32', 'SLURM_STEP_NUM_NODES': '4', 'SLURM_GPUS_ON_NODE': '8'}
  assert distributed.slurm_local_device_ids(one_per_gpu) is None  # JAX's SLURM_LOCALID
  one_per_node = dict(one_per_gpu, SLURM_NTASKS='4')
  assert distributed.slurm_local_device_ids(one_per_node) == list(range(8))
  bound = dict(one_per_gpu, SLURM_GPUS_PER_TASK='2')
  assert distributed.slurm_local_device_ids(bound) == [0, 1]


def test_fewer_devices_than_expected_is_a_user_error():
  distributed.check_devices(8, 8, 'x')
  distributed.check_devices(8, None, '')
  with pytest.raises(UserError, match='JAX sees 4 devices but the launch asked for 8'):
    distributed.check_devices(4, 8, 'x')
