"""Pod-scale behaviour on fake CPU devices: mesh layouts, FSDP memory, gradient
accumulation, multi-host processes, preemption and exact resume."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bertjax import checkpoint, config_lib, sharding, steps, train
from bertjax.bench import step as bench_step
from bertjax.models.bert import BertConfig

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')
STEPS = 20


def local_config(**overrides):
  c = config_lib.load_config(QUICKSTART + ':local')
  base = {'train.steps': STEPS, 'train.log_every': 1, 'train.checkpoint_every': 5}
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in {**base, **overrides}.items()])


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def final_params(workdir):
  config = config_lib.load_workdir_config(workdir)
  fns = steps.build(config_lib.model_config(config, 512), config.optim,
                    sharding.make_mesh(config.mesh), sharding.rules_from_config(config.mesh),
                    **config_lib.step_settings(config))
  _, params = checkpoint.restore_params(workdir, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fns.abstract_state['params']))
  return params


@pytest.fixture(scope='module')
def single_device_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('single'))
  train.train_and_evaluate(local_config(**{'mesh.data': 1}), workdir)
  return workdir


def padded_like_the_pipeline(batch):
  """bench's synthetic batch with rows of unequal length and masked counts, as the
  pipeline's are: micro-batches then hold different numbers of predictions, which an
  accumulation that averaged per micro-batch would get wrong."""
  b, length = batch['input_ids'].shape
  keep = np.arange(length)[None] < (length - 4 * np.arange(b))[:, None]
  batch = dict(batch, input_ids=np.where(keep, batch['input_ids'], 0),
               attention_mask=keep.astype(np.int32))
  p = batch['mlm_weights'].shape[1]
  weights = (np.arange(p)[None] < (p - 2 * (np.arange(b) % 4))[:, None])
  weights &= np.take_along_axis(keep, batch['mlm_positions'], 1)
  batch['mlm_weights'] = weights.astype(np.float32)
  batch['mlm_targets'] = np.where(weights, batch['mlm_targets'], 0)
  return batch


def step_losses(**overrides):
  """Losses of STEPS jitted train steps on synthetic batches under the config's mesh:
  the step's sharding and accumulation, without the input pipeline (which
  test_two_processes_match_one_process and the single-device run exercise)."""
  config = local_config(**overrides)
  mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_from_config(config.mesh)
  fns = steps.build(config_lib.model_config(config, config.data.tokenizer.vocab_size),
                    config.optim, mesh, rules, **config_lib.step_settings(config))
  got = []
  with sharding.activate(mesh, rules):
    state = fns.init(jax.random.key(config.seed))
    for i in range(STEPS):
      batch = padded_like_the_pipeline(bench_step.synthetic_batch(config, seed=i))
      state, metrics = fns.train_step(state, sharding.global_batch(batch, fns.batch_sharding))
      got.append(float(metrics['loss']))
  assert np.isfinite(got).all() and got[-1] < got[0]  # it trained: no vacuous match
  return got


@pytest.fixture(scope='module')
def single_device_losses():
  return step_losses(**{'mesh.data': 1})


@pytest.mark.parametrize('mesh', [dict(data=8, fsdp=1, tensor=1), dict(data=1, fsdp=8, tensor=1),
                                  dict(data=2, fsdp=2, tensor=2)])
def test_mesh_layouts_follow_the_single_device_run(single_device_losses, mesh):
  got = step_losses(**{f'mesh.{k}': v for k, v in mesh.items()})
  assert got == pytest.approx(single_device_losses, rel=1e-5)


def test_gradient_accumulation_equals_the_large_batch(single_device_losses):
  got = step_losses(**{'mesh.data': 1, 'train.grad_accum_steps': 4})
  assert got == pytest.approx(single_device_losses, rel=1e-5)


def test_fsdp_holds_an_eighth_of_the_state_per_device():
  config = local_config(**{'mesh.data': 1, 'mesh.fsdp': 8})
  model_cfg = BertConfig.from_dict({**config.model.to_dict(), 'vocab_size': 512})
  mesh = sharding.make_mesh(config.mesh)
  fns = steps.build(model_cfg, config.optim, mesh, sharding.rules_from_config(config.mesh),
                    **config_lib.step_settings(config))
  state = fns.init(jax.random.key(0))
  leaves = jax.tree.leaves({'params': state['params'], 'opt_state': state['opt_state']})
  total = sum(x.nbytes for x in leaves)
  per_device = [sum(s.data.nbytes for x in leaves for s in x.addressable_shards
                    if s.device == d) for d in mesh.devices.flat]
  # Biases over 'heads'/'mlp'/'vocab' stay replicated (tensor=1): a few % on top.
  assert max(per_device) < total / 8 * 1.1, (max(per_device), total)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train_command(workdir, *extra, checkpoint_every=5):
  return [sys.executable, '-m', 'bertjax', 'train', '--config', QUICKSTART + ':local',
          '--workdir', workdir, f'--config.train.steps={STEPS}', '--config.train.log_every=1',
          f'--config.train.checkpoint_every={checkpoint_every}', *extra]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return env


def test_two_processes_match_one_process(single_device_run, tmp_path):
  workdir = str(tmp_path / 'two')
  port = _free_port()
  procs = [subprocess.Popen(
      # One (two-process) checkpoint, at the end: more would only repeat it.
      _train_command(workdir, f'--coordinator_address=127.0.0.1:{port}',
                     '--num_processes=2', f'--process_id={i}', checkpoint_every=STEPS),
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  want, got = losses(single_device_run), losses(workdir)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-5), step
  assert 'held-out evaluation' in outputs[0] and 'held-out evaluation' not in outputs[1]


def _wait_for_step(workdir, step, proc, timeout=180):
  deadline = time.time() + timeout
  path = os.path.join(workdir, 'metrics.jsonl')
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and max(losses(workdir), default=0) >= step:
      return
    time.sleep(0.2)
  raise AssertionError(f'the run never reached step {step}')


def test_sigkill_then_restart_is_bitwise_identical(single_device_run, tmp_path):
  workdir = str(tmp_path / 'killed')
  proc = subprocess.Popen(_train_command(workdir, '--config.mesh.data=1'), env=_env(8),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_step(workdir, 12, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_written = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                         if d.isdigit())
  assert steps_written and steps_written[-1] < STEPS  # it really died mid-way
  train.train_and_evaluate(local_config(**{'mesh.data': 1}), workdir)
  want, got = losses(single_device_run), losses(workdir)
  assert all(got[s] == want[s] for s in want), 'losses differ after the restart'
  for a, b in zip(jax.tree.leaves(final_params(single_device_run)),
                  jax.tree.leaves(final_params(workdir))):
    np.testing.assert_array_equal(a, b)


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = subprocess.Popen(_train_command(workdir, '--config.mesh.data=1'), env=_env(8),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_step(workdir, 7, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert 'preempted: saved step' in out
  saved = int(out.split('preempted: saved step ')[1].split(';')[0])
  assert saved < STEPS and str(saved) in os.listdir(os.path.join(workdir, 'checkpoints'))


def test_a_partly_written_checkpoint_is_skipped(single_device_run, tmp_path, caplog):
  import shutil
  workdir = str(tmp_path / 'partial')
  shutil.copytree(single_device_run, workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  shutil.rmtree(os.path.join(ckpts, str(STEPS)))
  shutil.copytree(os.path.join(ckpts, '15'), os.path.join(ckpts, '20.orbax-checkpoint-tmp-1'))
  os.remove(os.path.join(workdir, 'metrics.jsonl'))
  train.train_and_evaluate(local_config(**{'mesh.data': 1}), workdir)
  assert 'skipping the partly written checkpoint' in caplog.text
  assert sorted(losses(workdir)) == list(range(16, STEPS + 1))
