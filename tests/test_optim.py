import jax.numpy as jnp
import numpy as np

from bertjax import config_lib, optim


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
