"""Distillation: the soft-target loss, a student trained beside a frozen teacher,
its checkpoints (the student alone) and its export."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import config_lib, distill, sharding, train, weights
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.models import heads

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')
QUICK = {'train.steps': 2, 'train.eval_batches': 1, 'train.checkpoint_every': 2}


def local_config(**overrides):
  c = config_lib.load_config(QUICKSTART + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


def test_soft_targets_ignore_the_padded_vocabulary():
  rng = np.random.default_rng(0)
  real = 100
  student, teacher = (jnp.asarray(rng.normal(size=(2, 3, real)), jnp.float32) for _ in 'st')
  pad = jnp.full((2, 3, 28), heads.PADDED_LOGIT)
  padded = lambda x: jnp.concatenate([x, pad], -1)
  kl = distill.soft_target_kl(student, teacher, 2.0, real)
  np.testing.assert_array_equal(
      distill.soft_target_kl(padded(student), padded(teacher), 2.0, real), kl)
  # Even large values in the padding columns change nothing: they are cut off.
  loud = jnp.concatenate([student, jnp.full((2, 3, 28), 50.0)], -1)
  np.testing.assert_array_equal(distill.soft_target_kl(loud, padded(teacher), 2.0, real), kl)
  grads = jax.grad(lambda s: distill.soft_target_kl(s, padded(teacher), 2.0, real).sum())(
      padded(student))
  assert np.all(np.asarray(grads[..., real:]) == 0)
  # KL against itself is 0; T² scaling: the loss at T is T² times the plain KL of x/T.
  np.testing.assert_allclose(distill.soft_target_kl(teacher, teacher, 2.0, real), 0, atol=1e-6)
  p, q = jax.nn.softmax(teacher / 2.0), jax.nn.softmax(student / 2.0)
  np.testing.assert_allclose(kl, 4.0 * (p * (jnp.log(p) - jnp.log(q))).sum(-1), rtol=1e-5)


def test_student_layers_spread_like_distilbert():
  assert distill.teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]
  assert distill.teacher_layers(4, 2) == [0, 3]
  assert distill.teacher_layers(4, 1) == [0]


def test_a_teacher_with_another_vocabulary_is_one_line():
  with pytest.raises(UserError, match=r"distill.teacher='t' has a 600-token vocabulary but "
                                      r"the student's has 512"):
    distill.check_vocabulary('t', 600, 512)


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('teacher'))
  train.train_and_evaluate(local_config(**QUICK), workdir)
  return workdir


def test_a_distilled_student_trains_saves_itself_alone_and_exports(teacher, tmp_path, capsys):
  workdir, out = str(tmp_path / 'student'), str(tmp_path / 'hf')
  config = local_config(**QUICK, **{'distill.teacher': teacher, 'model.num_layers': 1,
                                    'distill.init_from_teacher': True})
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results['mlm_loss'])
  assert 'student initialised from' in capsys.readouterr().out
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  logged = [r for r in records if 'kl_loss' in r]
  assert logged and all(np.isfinite(r['kl_loss']) and np.isfinite(r['cos_loss']) for r in logged)
  # Checkpoints hold the student alone: a 1-layer model's params, no teacher.
  saved = weights.open_weights(workdir)
  assert saved.model_cfg.num_layers == 1
  assert not any('layer.1.' in name for name in saved.tensors)
  assert main(['export', '--workdir', workdir, '--format', 'hf', '--out', out]) == 0
  import transformers
  model, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  assert model.config.num_hidden_layers == 1


def test_init_from_teacher_takes_spread_teacher_layers(teacher):
  config = local_config()
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  cfg = weights.source_model_config(teacher)
  taught = distill.open_teacher(teacher, cfg, mesh, rules)
  one_layer = dataclasses.replace(cfg, num_layers=1)
  params = distill.student_from_teacher(taught, weights.initial_params('pretraining', one_layer))
  source = jax.device_get(taught.params)
  for got, want in ((params['bert']['layers'][0], source['bert']['layers'][0]),
                    (params['bert']['embeddings'], source['bert']['embeddings']),
                    (params['mlm'], source['mlm'])):
    jax.tree.map(np.testing.assert_array_equal, got, want)
  narrow = dataclasses.replace(one_layer, hidden_size=64, intermediate_size=256)
  with pytest.raises(UserError, match='needs a student as wide as its teacher'):
    distill.student_from_teacher(taught, weights.initial_params('pretraining', narrow))
