"""Frozen parameters (`optim.freeze*`) and the classification heads' own dropout."""
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from bertjax import config_lib, finetune, optim, sharding, steps, train, weights
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')
GLUE = os.path.join(ROOT, 'experiments', 'glue.py')
VOCAB = 100


def local_config(**overrides):
  c = config_lib.load_config(QUICKSTART + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


def model_config(**kw):
  return BertConfig(vocab_size=VOCAB, num_layers=3, hidden_size=32, num_heads=2,
                    intermediate_size=64, max_position_embeddings=32, **kw)


def batch(seed, b=8, length=12, p=3):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, (b, length)).astype(np.int32)
  positions = np.tile(np.arange(p, dtype=np.int32) * 3 + 1, (b, 1))
  return dict(input_ids=ids, token_type_ids=np.zeros_like(ids),
              attention_mask=np.ones_like(ids), position_ids=np.tile(np.arange(length), (b, 1)),
              mlm_positions=positions, mlm_targets=np.take_along_axis(ids, positions, 1),
              mlm_weights=np.ones((b, p), np.float32),
              nsp_labels=rng.integers(0, 2, b).astype(np.int32))


def paths(tree):
  return {'.'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def train_steps(n, **optim_overrides):
  config = local_config(**{'train.batch_size': 8, 'optim.warmup_steps': 0,
                           'optim.weight_decay': 0.1, 'model.dropout_rate': 0.1,
                           **{f'optim.{k}': v for k, v in optim_overrides.items()}})
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  fns = steps.build(model_config(dropout_rate=0.1), config.optim, mesh, rules,
                    **config_lib.step_settings(config))
  state = fns.init(jax.random.key(0))
  first = jax.device_get(state['params'])
  for i in range(n):
    state, _ = fns.train_step(state, sharding.global_batch(batch(i), fns.batch_sharding))
  return first, jax.device_get(state)


def test_frozen_params_stay_bit_identical_and_have_no_optimizer_state():
  first, state = train_steps(3, freeze_embeddings=True, freeze_layers=2, freeze='pooler')
  before, after = paths(first), paths(state['params'])
  frozen = [n for n in before if '.embeddings.' in n or '.layers.0.' in n or '.layers.1.' in n
            or '.pooler.' in n]
  assert len(frozen) == 5 + 2 * 16 + 2
  for name in frozen:  # weight decay 0.1 would move every kernel
    assert np.array_equal(before[name], after[name]), name
  trained = [n for n in before if n not in frozen]
  assert trained and all(not np.array_equal(before[n], after[n])
                         for n in trained if n.endswith('kernel'))
  moments = [leaf for leaf in jax.tree.leaves(state['opt_state']) if np.ndim(leaf) > 0]
  # Adam's two moments for each trained parameter, nothing for the frozen ones.
  assert sorted(x.size for x in moments) == sorted(2 * [before[n].size for n in trained])
  masked = [leaf for leaf in jax.tree.leaves(state['opt_state'],
                                             is_leaf=lambda x: isinstance(x, optax.MaskedNode))
            if isinstance(leaf, optax.MaskedNode)]
  assert len(masked) == 2 * len(frozen)


def test_grad_norm_is_the_norm_of_the_applied_gradients():
  """Frozen gradients are computed but zeroed: the logged norm leaves them out."""
  config = local_config(**{'train.batch_size': 8, 'optim.freeze_embeddings': True})
  model_cfg = model_config(dropout_rate=0.0, attention_dropout_rate=0.0)
  mesh, rules = sharding.make_mesh(config.mesh), sharding.rules_from_config(config.mesh)
  fns = steps.build(model_cfg, config.optim, mesh, rules, total_steps=config.train.steps,
                    batch_size=8, grad_accum_steps=1, seed=0)
  state = fns.init(jax.random.key(0))
  params, b = jax.device_get(state['params']), batch(0)
  _, metrics = fns.train_step(state, sharding.global_batch(b, fns.batch_sharding))

  objective = steps.pretraining(model_cfg)
  graphdef = nnx.graphdef(objective.build_model(jax.random.key(0)))

  def loss(p):
    sums = objective.batch_sums(nnx.merge(graphdef, p), b, nnx.Rngs(dropout=0))
    return objective.loss_from_sums(sums, objective.batch_counts(b))
  grads = paths(jax.grad(loss)(params))
  norm = lambda names: np.sqrt(sum(np.sum(np.square(grads[n])) for n in names))
  trained = [n for n in grads if '.embeddings.' not in n]
  assert norm(trained) < 0.99 * norm(grads)  # the frozen embeddings' share is not small
  np.testing.assert_allclose(metrics['grad_norm'], norm(trained), rtol=1e-4)


def test_patterns_match_whole_dotted_parts():
  params = {'bert': {'layers': {str(i): {'w': np.ones(1)} for i in range(12)},
                     'embeddings': {'w': np.ones(1)}}}
  labels = paths(optim.frozen_labels(params, ('layers.1', 'layers.1*.w')))
  assert [n for n, v in labels.items() if v == 'frozen'] == [
      'bert.layers.1.w', 'bert.layers.10.w', 'bert.layers.11.w']
  with pytest.raises(UserError, match=r"optim.freeze pattern 'layer.0' matches no parameter"):
    optim.frozen_labels(params, ('layer.0',))


def test_bad_freeze_keys_are_one_line():
  with pytest.raises(UserError, match=r'optim.freeze pattern .encoder. matches no parameter'):
    train_steps(1, freeze='encoder')
  with pytest.raises(UserError, match=r'optim.freeze_layers=4 exceeds .* 3 layers'):
    train_steps(1, freeze_layers=4)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train.train_and_evaluate(local_config(**{'train.steps': 2, 'train.eval_batches': 1}), workdir)
  return workdir


def test_resuming_with_another_freeze_is_refused(pretrained):
  config = local_config(**{'train.steps': 2, 'train.eval_batches': 1, 'optim.freeze_layers': 1})
  with pytest.raises(UserError, match=r'trained with optim.freeze_layers=0, but the config says 1'):
    train.train_and_evaluate(config, pretrained)


def test_a_frozen_encoder_fine_tunes_checkpoints_and_resumes_unchanged(pretrained, tmp_path):
  workdir = str(tmp_path / 'glue')

  def glue(steps):
    c = config_lib.load_config(f'{GLUE}:local,init={pretrained}')
    return config_lib.apply_overrides(c, [
        f'train.steps={steps}', 'train.checkpoint_every=1', 'train.eval_every=1',
        'optim.freeze_embeddings=true', 'optim.freeze_layers=2'])
  finetune.finetune_and_evaluate(glue(1), workdir)
  finetune.finetune_and_evaluate(glue(2), workdir)  # restores the masked optimizer state
  encoder = lambda w: {n: v for n, v in w.tensors.items() if n.startswith('bert.')
                       and 'pooler' not in n}
  before = encoder(weights.open_weights(pretrained))
  after = encoder(weights.open_weights(workdir, step=2))
  assert before.keys() == after.keys() and before
  for name in before:
    np.testing.assert_array_equal(before[name], after[name], err_msg=name)


@pytest.mark.parametrize('kind', ['sequence_classification', 'token_classification'])
def test_classifier_dropout_is_the_heads_own(kind):
  cfg = model_config(dropout_rate=0.0, attention_dropout_rate=0.0)
  ids = np.random.default_rng(0).integers(5, VOCAB, (2, 12)).astype(np.int32)

  def logits(classifier_dropout):
    model = heads.build(kind, cfg, num_labels=3, rngs=nnx.Rngs(params=0),
                        classifier_dropout=classifier_dropout)
    return model(ids, rngs=nnx.Rngs(dropout=1)), model(ids)
  trained, evaluated = logits(None)  # None: the encoder's rate, here 0
  np.testing.assert_array_equal(trained, evaluated)
  trained, evaluated = logits(0.5)
  assert not np.allclose(trained, evaluated)
  with pytest.raises(UserError, match=r'task.classifier_dropout=1.5 must lie in \[0.0, 1.0\)'):
    from bertjax import config_checks
    c = config_lib.finetune_defaults('classify')
    c.init, c.task.classifier_dropout = 'x', 1.5
    config_checks.validate_finetune(c, '')
