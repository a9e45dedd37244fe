"""Phase 2's `init` and resumes restore straight into the run's shardings: on an
FSDP mesh of 8 fake devices, and across two processes that each hold half of it."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from bertjax import checkpoint, config_lib, init_weights, sharding, steps, train, weights
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.models import heads
from flax import nnx

from conftest import ROOT

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
                    total_steps=config.train.steps, batch_size=config.train.batch_size,
                    grad_accum_steps=config.train.grad_accum_steps, seed=config.seed)
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
