import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import config_lib, optim
from bertjax.errors import UserError


def test_linear_warmup_then_linear_decay_to_zero():
  c = config_lib.pretrain_defaults('tiny').optim
  c.learning_rate, c.warmup_steps = 1e-3, 10
  lr = optim.learning_rate_schedule(c, 110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_weight_decay_skips_biases_and_layer_norm():
  params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
            'layer_norm': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)},
            'word_embeddings': {'embedding': jnp.ones((4, 2))}}
  mask = optim.weight_decay_mask(params)
  assert mask == {'dense': {'kernel': True, 'bias': False},
                  'layer_norm': {'scale': False, 'bias': False},
                  'word_embeddings': {'embedding': True}}


def _cfg(**kw):
  c = config_lib.pretrain_defaults('tiny').optim
  c.learning_rate, c.warmup_steps = 1e-2, 0
  for k, v in kw.items():
    c[k] = v
  return c


def test_cosine_and_constant_schedules():
  cos = optim.learning_rate_schedule(_cfg(decay='cosine', warmup_steps=10), 110)
  np.testing.assert_allclose([cos(10), cos(60), cos(110)], [1e-2, 5e-3, 0.0], atol=1e-9)
  const = optim.learning_rate_schedule(_cfg(decay='constant', warmup_steps=10), 110)
  np.testing.assert_allclose([const(5), const(50), const(110)], [5e-3, 1e-2, 1e-2], atol=1e-9)


def test_lamb_scales_each_update_by_its_trust_ratio():
  params = {'w': jnp.full((4, 4), 2.0)}
  grads = {'w': jnp.full((4, 4), 1e-3)}
  tx = optim.make_optimizer(_cfg(name='lamb', weight_decay=0.0, decay='constant'), 10, 1)
  updates, _ = tx.update(grads, tx.init(params), params)
  # LAMB's step is lr * ||w|| / ||adam update|| * adam update: norm lr * ||w||.
  np.testing.assert_allclose(np.linalg.norm(updates['w']), 1e-2 * 8.0, rtol=1e-3)


def test_layer_decay_scales_lower_layers_down():
  params = {'bert': {'embeddings': {'w': jnp.ones(2)},
                     'layers': {0: {'w': jnp.ones(2)}, 1: {'w': jnp.ones(2)}}},
            'head': {'w': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.make_optimizer(_cfg(layer_decay=0.5, weight_decay=0.0, decay='constant'), 10, 2)
  updates, _ = tx.update(grads, tx.init(params), params)
  scale = lambda u: float(abs(u['w'][0]))
  head = scale(updates['head'])
  assert scale(updates['bert']['layers'][1]) == pytest.approx(head * 0.5)
  assert scale(updates['bert']['layers'][0]) == pytest.approx(head * 0.25)
  assert scale(updates['bert']['embeddings']) == pytest.approx(head * 0.125)


def test_unknown_optimizer_is_named():
  with pytest.raises(UserError, match="optim.name 'sgd'"):
    optim.make_optimizer(_cfg(name='sgd'), 10, 1)
