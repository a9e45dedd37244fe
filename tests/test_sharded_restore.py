"""Phase 2's `init`, Hugging Face `init`s, a distilled student's start and resumes
land straight in the run's shardings: on an FSDP mesh of 8 fake devices, and across
two processes that each hold half of it."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from bertjax import checkpoint, config_lib, hf, init_weights, sharding, steps, train, weights
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.models import heads
from flax import nnx

from conftest import ROOT
from gcs_emulator import gcs_bucket  # noqa: F401  pylint: disable=unused-import

BERT_BASE = os.path.join(ROOT, 'experiments', 'bert_base.py')


def phase2_config(phase1, **overrides):
  c = config_lib.load_config(f'{BERT_BASE}:local,phase=2,init={phase1}')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


@pytest.fixture(scope='module')
def phase1(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('phase1'))
  train.train_and_evaluate(config_lib.load_config(f'{BERT_BASE}:local'), workdir)
  return workdir


@pytest.fixture(scope='module')
def phase2_fsdp8(phase1, tmp_path_factory):
  """The issue's command: phase 2 on mesh.fsdp=8."""
  workdir = str(tmp_path_factory.mktemp('phase2'))
  assert main(['train', '--config', f'{BERT_BASE}:local,phase=2,init={phase1}',
               '--config.mesh.fsdp=8', '--workdir', workdir]) in (0, None)
  return workdir


def test_phase2_on_fsdp8_trains(phase2_fsdp8):
  assert sorted(losses(phase2_fsdp8)) == [2, 4]


def test_init_lands_on_the_target_shardings_without_the_host(phase1, tmp_path, monkeypatch):
  config = phase2_config(phase1, **{'mesh.fsdp': 8})
  init_weights.adopt_architecture(config)
  model_cfg = config_lib.model_config(config, weights.open_tokenizer(phase1).vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  fns = steps.build(model_cfg, config.optim, mesh, sharding.rules_from_config(config.mesh),
                    **config_lib.step_settings(config))
  fresh = fns.init(jax.random.key(0))['params']
  # The host path (numpy, `transformers` names) is not taken.
  monkeypatch.setattr(weights, 'open_weights', lambda *a, **k: pytest.fail('read on host'))
  params = init_weights.initial_params(config.init, fresh, 'pretraining')
  _, saved = checkpoint.restore_params(phase1, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fns.abstract_state['params']))
  flat_target = jax.tree_util.tree_leaves_with_path(fns.abstract_state['params'])
  got, want = jax.tree.leaves(params), jax.tree.leaves(saved)
  assert len(got) == len(want) == len(flat_target)
  sharded = 0
  for (path, target), g, w in zip(flat_target, got, want):
    assert g.sharding == target.sharding, path
    sharded += not g.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  assert sharded > len(got) // 2  # fsdp=8 splits the weights, not only copies them


def test_a_hole_is_refused_on_shapes_before_any_read(phase1, monkeypatch):
  config = phase2_config(phase1)
  init_weights.adopt_architecture(config)
  model_cfg = config_lib.model_config(config, weights.open_tokenizer(phase1).vocab_size)
  fresh = weights.abstract_params('pretraining', model_cfg)
  kernel = fresh['bert']['layers'][0]['intermediate']['kernel']
  fresh['bert']['layers'][0]['intermediate']['kernel'] = jax.ShapeDtypeStruct(
      (kernel.shape[0], kernel.shape[1] + 1), kernel.dtype)
  monkeypatch.setattr(checkpoint, 'restore_params', lambda *a, **k: pytest.fail('read'))
  with pytest.raises(UserError, match='mis-shaped'):
    weights.restore_sharded(phase1, fresh, 'pretraining')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_processes(phase1, workdir, steps_):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'bertjax', 'train', '--config',
       f'{BERT_BASE}:local,phase=2,init={phase1}', '--workdir', workdir,
       '--config.mesh.fsdp=8', '--config.train.checkpoint_every=2',
       f'--config.train.steps={steps_}', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  return outputs[0]


def test_two_processes_init_sharded_then_resume(phase1, phase2_fsdp8, tmp_path):
  """Phase 2 over two processes (fsdp=8 spans both): init from phase 1, stop at step
  2, resume from that checkpoint to step 4; the losses are the one-process run's."""
  workdir = str(tmp_path / 'two')
  first = _two_processes(phase1, workdir, 2)
  assert 'starting from the weights of' in first
  second = _two_processes(phase1, workdir, 4)
  assert 'resumed from step 2' in second
  want, got = losses(phase2_fsdp8), losses(workdir)
  assert sorted(got) == [2, 4]
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-5), step


@pytest.mark.parametrize('hf_class, kind', [
    ('BertForPreTraining', 'pretraining'), ('BertModel', 'pretraining'),
    ('BertForPreTraining', 'sequence_classification')])
def test_hugging_face_weights_land_on_the_target_shardings(tmp_path, hf_class, kind):
  import transformers
  hf_cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=64)
  getattr(transformers, hf_class)(hf_cfg).save_pretrained(str(tmp_path),
                                                          safe_serialization=True)
  source = weights.open_weights(str(tmp_path))
  mesh = sharding.make_mesh(config_lib.ConfigDict(dict(data=1, fsdp=4, tensor=2)))
  rules = sharding.DEFAULT_RULES
  host = weights.initial_params(kind, source.model_cfg, num_labels=3)
  with sharding.activate(mesh, rules):
    shardings = nnx.to_pure_dict(sharding.param_shardings(nnx.state(nnx.eval_shape(
        lambda: heads.build(kind, source.model_cfg, num_labels=3, rngs=nnx.Rngs(0)))),
        mesh, rules))
  fresh = jax.device_put(host, shardings)
  params, _ = weights.place_hf(str(tmp_path), fresh, kind, num_labels=3)
  want, _ = weights.transplant(source, host, kind, num_labels=3)
  flat = jax.tree_util.tree_leaves_with_path(want)
  got = jax.tree.leaves(params)
  assert len(got) == len(flat)
  for (path, w), g, s in zip(flat, got, jax.tree.leaves(shardings)):
    assert g.sharding == s, path
    np.testing.assert_array_equal(np.asarray(g), w, err_msg=str(path))


def tiny_hf_dir(path, hf_class='BertForPreTraining', layers=2):
  """A random `transformers` BERT saved with its vocabulary: the directory a run's
  `init` (or a teacher) may name."""
  import torch
  import transformers
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *'abcdefghijklmnopqrstuvwxyz']
  hf_cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32,
                                   num_hidden_layers=layers, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64)
  torch.manual_seed(0)
  getattr(transformers, hf_class)(hf_cfg).save_pretrained(str(path), safe_serialization=True)
  (path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  return str(path)


def test_two_processes_start_from_hugging_face_weights_like_one(tmp_path):
  """A run whose `init` is a Hugging Face directory, over two processes (fsdp=8 spans
  both): each process places only its own slices, and the params are the
  one-process run's, bit for bit."""
  import sharded_init_worker
  init = tiny_hf_dir(tmp_path / 'hf')
  port, out = _free_port(), str(tmp_path / 'two.npz')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  worker = os.path.join(ROOT, 'tests', 'sharded_init_worker.py')
  procs = [subprocess.Popen([sys.executable, worker, init, out, f'127.0.0.1:{port}', str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  params, _ = sharded_init_worker.start(init)
  want = sharded_init_worker.flat(params)
  got = np.load(out)
  assert sorted(got.files) == sorted(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  # And they are the checkpoint's: a loaded weight, not a fresh one.
  source = weights.open_weights(init)
  np.testing.assert_array_equal(
      want["['bert']['layers'][1]['output']['bias']"],
      source.tensors['bert.encoder.layer.1.output.dense.bias'])


def test_a_hugging_face_init_on_gcs_is_placed_like_a_local_one(gcs_bucket, tmp_path,  # noqa: F811
                                                               monkeypatch):
  """An `init` on gs://: its model.safetensors is staged to the host's disk, then
  placed slice by slice like a local directory's (no read through the host params)."""
  from etils import epath
  local = tiny_hf_dir(tmp_path / 'hf')
  remote = f'{gcs_bucket}/hf-{os.getpid()}'
  for path in epath.Path(local).iterdir():
    (epath.Path(remote) / path.name).write_bytes(path.read_bytes())
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))  # the staged copy
  monkeypatch.setattr(weights, 'open_weights', lambda *a, **k: pytest.fail('read on host'))
  cfg, _ = hf.read_hf_config(local)
  mesh = sharding.make_mesh(config_lib.ConfigDict(dict(data=1, fsdp=8, tensor=1)))
  with sharding.activate(mesh, sharding.DEFAULT_RULES):
    shardings = nnx.to_pure_dict(sharding.param_shardings(nnx.state(nnx.eval_shape(
        lambda: heads.build('pretraining', cfg, rngs=nnx.Rngs(0)))), mesh,
        sharding.DEFAULT_RULES))
  fresh = jax.device_put(weights.initial_params('pretraining', cfg), shardings)
  want = init_weights.initial_params(local, fresh, 'pretraining')
  got = init_weights.initial_params(remote, fresh, 'pretraining')
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert g.sharding == w.sharding
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_a_hugging_face_init_without_safetensors_is_one_line(tmp_path):
  init = tiny_hf_dir(tmp_path / 'hf')
  os.replace(tmp_path / 'hf' / 'model.safetensors', tmp_path / 'hf' / 'pytorch_model.bin')
  with pytest.raises(UserError, match='holds only pytorch_model.bin'):
    init_weights.initial_params(init, {}, 'pretraining')


def test_a_student_starts_from_its_teacher_on_the_step_s_shardings(tmp_path):
  """distill.init_from_teacher on fsdp=8: the student's params are copied on the
  devices into the step's shardings (not the teacher's buffers), equal to the
  teacher layers picked on the host."""
  from bertjax import distill
  teacher_dir = tiny_hf_dir(tmp_path / 'teacher', layers=3)
  config = config_lib.apply_overrides(
      config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local'),
      [f'init={teacher_dir}', 'mesh.fsdp=8'])
  init_weights.adopt_architecture(config)  # the teacher's widths...
  config.model.num_layers = 2  # ...and fewer layers
  config.init = ''
  model_cfg = config_lib.model_config(config, weights.open_tokenizer(teacher_dir).vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  fns = steps.build(model_cfg, config.optim, mesh, rules, **config_lib.step_settings(config))
  teacher = distill.open_teacher(teacher_dir, model_cfg, mesh, rules)
  params = distill.student_from_teacher(teacher, fns.abstract_state['params'])
  host = jax.device_get(teacher.params)
  want = dict(host, bert=dict(host['bert'], layers={0: host['bert']['layers'][0],
                                                    1: host['bert']['layers'][2]}))
  flat_target = jax.tree_util.tree_leaves_with_path(fns.state_sharding['params'])
  got, expected = jax.tree.leaves(params), jax.tree.leaves(want)
  assert len(got) == len(expected) == len(flat_target)
  sharded = 0
  for (path, target), g, w in zip(flat_target, got, expected):
    assert g.sharding == target, path
    sharded += not g.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(g), w, err_msg=str(path))
  assert sharded > len(got) // 2
  # The train step donates the student's state; the teacher's weights stay.
  jax.block_until_ready(fns.init_from_params(params))
  jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)(params)
  assert not any(x.is_deleted() for x in jax.tree.leaves(teacher.params))
