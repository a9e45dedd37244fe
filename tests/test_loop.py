"""The shared training loop: workdirs written before it still resume, evaluate and
export; NaN, SIGTERM and Ctrl-C stops; unreadable checkpoints and failed saves."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import (checkpoint, config_lib, finetune, init_weights, loop, reporting, sharding,
                     steps, train)
from bertjax.cli import main
from bertjax.errors import UserError

from conftest import ROOT

FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')


@pytest.fixture
def old(tmp_path, monkeypatch):
  """A copy of the workdirs written before the shared loop; the fine-tuned one names
  its init relatively, so the tests run from the copy."""
  shutil.copytree(FIXTURES, tmp_path / 'fixtures')
  monkeypatch.chdir(tmp_path / 'fixtures')
  return tmp_path / 'fixtures'


def workdir_config(workdir, **overrides):
  config = config_lib.load_workdir_config(str(workdir))
  return config_lib.apply_overrides(config, [f'{k}={v}' for k, v in overrides.items()])


def records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def steps_in(workdir, subdir='checkpoints'):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, subdir)) if d.isdigit())


# Workdirs written by the code before this loop (tests/fixtures/README.md).

def test_an_old_pretraining_workdir_reevaluates_then_resumes(old, capsys):
  n = len(records('pretrain'))
  results = train.train_and_evaluate(workdir_config('pretrain'), 'pretrain')
  assert np.isfinite(results['mlm_loss'])
  assert [r for r in records('pretrain')[n:] if 'loss' in r] == []  # only evaluated
  train.train_and_evaluate(workdir_config('pretrain', **{'train.steps': 6}), 'pretrain')
  assert 'resumed from step 4' in capsys.readouterr().out
  assert [r['step'] for r in records('pretrain') if 'loss' in r][-1] == 6
  assert steps_in('pretrain') == [2, 4, 6]
  assert main(['export', '--workdir', 'pretrain', '--out', 'exported']) == 0
  assert os.path.isfile(os.path.join('exported', 'model.safetensors'))


def test_an_old_finetuned_workdir_evaluates_and_resumes_with_a_profile(old, capsys):
  best = json.load(open('finetune/best.json'))
  assert main(['evaluate', '--workdir', 'finetune']) == 0
  assert f'accuracy       {best["metrics"]["accuracy"]:.4f}' in capsys.readouterr().out
  config = workdir_config('finetune', **{'train.steps': 9})
  finetune.finetune_and_evaluate(config, 'finetune', profile=True)
  assert 'resumed from step 4' in capsys.readouterr().out
  assert steps_in('finetune') == [9]
  assert [r['step'] for r in records('finetune') if 'eval_accuracy' in r][-3:] == [6, 8, 9]
  now = json.load(open('finetune/best.json'))
  assert steps_in('finetune', 'best') == [now['step']] and now['step'] in (2, 6, 8, 9)
  traces = [f for _, _, files in os.walk('finetune/profile') for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces


def test_an_old_imported_workdir_trains_from_its_weights(old, capsys):
  config = config_lib.load_config(QUICKSTART + ':local')
  config_lib.apply_overrides(config, ['train.steps=2', 'train.eval_batches=1'])
  results = train.train_and_evaluate(config, 'imported')
  assert 'starting from the weights imported from' in capsys.readouterr().out
  assert np.isfinite(results['mlm_loss']) and steps_in('imported') == [0, 2]


# Unreadable checkpoints: moved aside, the previous one used; none left stops the run.

def _damage(step_dir, how):
  arrays = [os.path.join(d, f) for d, _, files in os.walk(step_dir) for f in files
            if os.sep + 'd' + os.sep in os.path.join(d, f)]
  biggest = max(arrays, key=os.path.getsize)
  if how == 'random bytes':
    with open(biggest, 'r+b') as f:
      f.seek(64)
      f.write(np.random.default_rng(0).bytes(4096))
  elif how == 'truncated':
    os.truncate(biggest, os.path.getsize(biggest) // 2)
  else:
    os.remove(biggest)


def _abstract_state(workdir):
  config = workdir_config(workdir)
  fns = steps.build(config_lib.model_config(config, 512), config.optim,
                    sharding.make_mesh(config.mesh), sharding.rules_from_config(config.mesh),
                    **config_lib.step_settings(config))
  return fns.abstract_state


@pytest.mark.parametrize('how', ['random bytes', 'truncated', 'deleted'])
def test_an_unreadable_checkpoint_is_set_aside_and_the_previous_one_used(old, how, caplog):
  _damage('pretrain/checkpoints/4', how)
  mngr = checkpoint.manager('pretrain', keep=2)
  state = checkpoint.restore(mngr, _abstract_state('pretrain'))
  assert int(state['step']) == 2
  [line] = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert line.startswith('checkpoint 4 cannot be read (') and line.endswith('using step 2')
  assert '\n' not in line
  assert steps_in('pretrain') == [2] and steps_in('pretrain', 'checkpoints_unreadable') == [4]


def test_with_no_readable_checkpoint_left_the_run_stops(old):
  _damage('pretrain/checkpoints/4', 'deleted')
  _damage('pretrain/checkpoints/2', 'random bytes')
  with pytest.raises(UserError, match=r'no checkpoint in .* can be read .*use a new --workdir'):
    train.train_and_evaluate(workdir_config('pretrain'), 'pretrain')
  with pytest.raises(UserError, match='no checkpoint in'):  # and again: not starting over
    train.train_and_evaluate(workdir_config('pretrain'), 'pretrain')
  assert not os.path.exists('pretrain/checkpoints/2')
  assert steps_in('pretrain', 'checkpoints_unreadable') == [2, 4]


def test_evaluating_an_unreadable_checkpoint_is_one_line(old, capsys):
  _damage('finetune/checkpoints/4', 'truncated')
  assert main(['evaluate', '--workdir', 'finetune', '--step', '4']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('bertjax: error: checkpoint 4 in') and '\n' not in err


def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(old):
  # The checkpoint's biggest array file outgrows a 64 kB file-size limit (EFBIG).
  def limit():
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
  proc = subprocess.run(
      [sys.executable, '-m', 'bertjax', 'train', '--config', QUICKSTART + ':local',
       '--workdir', 'pretrain', *_fixture_model_flags(), '--config.train.steps=6',
       '--config.train.eval_batches=1', '--config.train.checkpoint_every=2',
       '--config.train.log_every=2'],
      preexec_fn=limit, capture_output=True, text=True, timeout=300,
      # The suite's compilation cache would hit the file-size limit first.
      env=dict(os.environ, PYTHONPATH=ROOT, JAX_ENABLE_COMPILATION_CACHE='false',
               BERTJAX_COMPILATION_CACHE='off'))
  assert proc.returncode == 2, proc.stderr[-3000:]
  # bertjax's line is all the user sees: not orbax's and tensorstore's copies of the
  # error from their writing threads (hundreds of lines of tracebacks).
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr
  [line] = proc.stderr.strip().splitlines()
  assert line.startswith('bertjax: error: could not write checkpoint to ') and \
      'OSError: File too large; the checkpoints already written (2, 4) are kept' in line, line
  assert steps_in('pretrain') == [2, 4]
  state = checkpoint.restore(checkpoint.manager('pretrain', keep=2), _abstract_state('pretrain'))
  assert int(state['step']) == 4


def _fixture_model_flags():
  model = workdir_config('pretrain').model
  return [f'--config.model.{k}={model[k]}' for k in init_weights.ARCHITECTURE_KEYS]


# The loop itself, on a one-number "model": NaN and signal stops.

def _toy_job(total_steps, loss_at, **overrides):
  def train_step(state, batch):
    step = int(state['step']) + 1
    return dict(step=jnp.int32(step), w=state['w'] + batch), dict(loss=loss_at(step))
  fields = dict(
      train_step=train_step, next_batch=lambda step: jnp.ones(3),
      summarise=lambda pending, seconds, n: dict(loss=float(np.mean([m['loss'] for m in pending]))),
      show=lambda m: {}, total_steps=total_steps, log_every=3, checkpoint_every=2)
  return loop.Job(**{**fields, **overrides})


def _run_toy(workdir, job):
  mngr = checkpoint.manager(str(workdir), keep=10)
  state = dict(step=jnp.int32(0), w=jnp.zeros(3))
  return loop.run(job, state, 0, workdir=str(workdir), mngr=mngr,
                  writer=reporting.MetricsWriter(str(workdir))), mngr


def test_a_nan_names_the_last_checkpoint_saved_while_the_loss_was_finite(tmp_path):
  # Logged at 3 (finite) and 6 (NaN from step 5): checkpoint 4 came after the last
  # finite loss, so step 2 is the good one.
  job = _toy_job(9, lambda step: np.nan if step >= 5 else 1.0)
  with pytest.raises(UserError, match=r'the loss became nan by step 6; the last good checkpoint '
                                      r'\(step 2\) is kept; step 4 may already hold the NaN\.'):
    _run_toy(tmp_path, job)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_then_stops(tmp_path, signum, capsys):
  def loss_at(step):
    if step == 3:
      os.kill(os.getpid(), signum)
    return 1.0
  job = _toy_job(9, loss_at, log_every=1, checkpoint_every=100)
  if signum == signal.SIGINT:
    with pytest.raises(KeyboardInterrupt):
      _run_toy(tmp_path, job)
  else:
    state, _ = _run_toy(tmp_path, job)
    assert state is None
  out = capsys.readouterr().out
  word = 'interrupted' if signum == signal.SIGINT else 'preempted'
  assert f'{word}: saved step 3; re-run the same command to resume' in out
  assert steps_in(tmp_path) == [3]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def _train_command(workdir):
  return [sys.executable, '-m', 'bertjax', 'train', '--config', QUICKSTART + ':local',
          '--workdir', workdir, '--config.train.steps=200', '--config.train.log_every=1',
          '--config.train.checkpoint_every=100', '--config.mesh.data=1']


def _wait_for_a_logged_step(workdir, proc, timeout=180):
  path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and os.path.getsize(path) > 0:
      return
    time.sleep(0.2)
  raise AssertionError('the run never logged a step')


def test_ctrl_c_saves_and_exits_130_and_a_second_one_exits_at_once(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  once, twice = str(tmp_path / 'once'), str(tmp_path / 'twice')
  procs = {w: subprocess.Popen(_train_command(w), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for w in (once, twice)}
  for workdir, proc in procs.items():
    _wait_for_a_logged_step(workdir, proc)
    proc.send_signal(signal.SIGINT)
  # The second Ctrl-C once the first was taken (two at once would arrive as one).
  seen = ''
  while 'Ctrl-C again' not in seen and procs[twice].poll() is None:
    seen += procs[twice].stdout.readline()
  procs[twice].send_signal(signal.SIGINT)
  out, _ = procs[once].communicate(timeout=120)
  assert procs[once].returncode == 130, out[-2000:]
  saved = int(out.split('interrupted: saved step ')[1].split(';')[0])
  assert 0 < saved < 200 and steps_in(once) == [saved]
  out, _ = procs[twice].communicate(timeout=60)
  assert procs[twice].returncode == -signal.SIGINT, (seen + out)[-2000:]
  assert 'interrupted again; exiting without saving' in out and 'saved step' not in out


def _gone(process_group, timeout=30):
  """Whether every process of the group (grain's workers, multiprocessing's resource
  tracker) has ended within `timeout` seconds."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      os.killpg(process_group, 0)
    except ProcessLookupError:
      return True
    time.sleep(0.2)
  return False


def test_ctrl_c_with_data_workers_saves_and_stops_every_process(tmp_path):
  # A terminal's Ctrl-C signals the whole process group, grain's workers included.
  env = dict(os.environ, PYTHONPATH=ROOT)
  once, twice = str(tmp_path / 'once'), str(tmp_path / 'twice')
  procs = {w: subprocess.Popen(_train_command(w) + ['--config.data.workers=1'], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True) for w in (once, twice)}
  for workdir, proc in procs.items():
    _wait_for_a_logged_step(workdir, proc)
    os.killpg(proc.pid, signal.SIGINT)
  seen = ''
  while 'Ctrl-C again' not in seen and procs[twice].poll() is None:
    seen += procs[twice].stdout.readline()
  os.killpg(procs[twice].pid, signal.SIGINT)
  out, _ = procs[once].communicate(timeout=120)
  assert procs[once].returncode == 130, out[-2000:]
  saved = int(out.split('interrupted: saved step ')[1].split(';')[0])
  assert 0 < saved < 200 and steps_in(once) == [saved]
  assert 'Traceback' not in out and 'leaked' not in out, out[-3000:]
  out, _ = procs[twice].communicate(timeout=60)
  assert procs[twice].returncode == -signal.SIGINT, (seen + out)[-2000:]
  assert 'Traceback' not in seen + out, (seen + out)[-3000:]
  assert all(_gone(proc.pid) for proc in procs.values())  # no worker left behind


def test_data_workers_end_with_a_killed_parent(tmp_path):
  # Two Ctrl-Cs that reach a worker before its handler runs count as one; the worker
  # must still end when its parent does, not live on holding the parent's stdout.
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(_train_command(workdir) + ['--config.data.workers=1'],
                          env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  _wait_for_a_logged_step(workdir, proc)
  os.kill(proc.pid, signal.SIGKILL)
  proc.communicate(timeout=60)  # EOF: nothing holds the pipe any more
  assert _gone(proc.pid)


def test_sigterm_on_one_of_two_processes_stops_both_at_one_saved_step(tmp_path):
  # JAX's preemption service (started by jax.distributed) spreads the notice.
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / 'two')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen(
      _train_command(workdir)[:-1] + [f'--coordinator_address=127.0.0.1:{port}',
                                      '--num_processes=2', f'--process_id={i}'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  _wait_for_a_logged_step(workdir, procs[0])
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=180)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  saved = int(outputs[0].split('preempted: saved step ')[1].split(';')[0])
  assert 0 < saved < 200 and steps_in(workdir) == [saved]
