"""Activation checkpointing (`model.remat`) recomputes; it never changes a gradient."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertjax.errors import UserError
from bertjax.models import bert
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain

CFG = BertConfig(vocab_size=97, num_layers=3, hidden_size=32, num_heads=4,
                 intermediate_size=64, max_position_embeddings=32,
                 dropout_rate=0.2, attention_dropout_rate=0.2)


def batch(b=2, length=12, p=3):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 97, (b, length)).astype(np.int32)
  positions = np.tile(np.arange(p, dtype=np.int32) * 3, (b, 1))
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  return dict(input_ids=ids, token_type_ids=np.zeros_like(ids), attention_mask=mask,
              position_ids=np.tile(np.arange(length), (b, 1)), mlm_positions=positions,
              mlm_targets=np.take_along_axis(ids, positions, 1),
              mlm_weights=np.ones((b, p), np.float32), nsp_labels=np.array([0, 1], np.int32))


def gradients(cfg):
  """Gradients of the MLM + NSP loss with dropout on, from fixed weights and keys."""
  model = pretrain.build_model(cfg, jax.random.key(0))
  graphdef, params = nnx.split(model)

  @jax.jit
  def grad(params):
    def loss(params):
      sums = pretrain.batch_sums(nnx.merge(graphdef, params), batch(),
                                 nnx.Rngs(dropout=jax.random.key(5)))
      return pretrain.loss_from_sums(sums, sums['mlm_count'], sums['nsp_count'])
    return jax.grad(loss)(params)
  return grad(params)


@pytest.mark.parametrize('scan', [False, True])
def test_every_policy_gives_the_unrematerialised_gradients(scan):
  reference = gradients(dataclasses.replace(CFG, scan_layers=scan))
  # Relative to each weight's gradient; a gradient that is zero in exact arithmetic
  # (the key bias: softmax ignores it) is held to the model's largest instead.
  largest = max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(reference))
  for policy in ('full', 'dots', 'dots_with_no_batch_dims'):
    got = gradients(dataclasses.replace(CFG, scan_layers=scan, remat=policy))
    for (path, want), (_, have) in zip(nnx.to_flat_state(reference), nnx.to_flat_state(got)):
      want, have = np.asarray(want[...]), np.asarray(have[...])
      scale = max(np.abs(want).max(), 1e-3 * largest)
      assert np.abs(have - want).max() <= 1e-6 * scale, (policy, path)


def test_policies_recompute_what_they_do_not_save():
  """The backward pass of `full` holds fewer residuals than `dots`, which holds fewer
  than no rematerialisation: the policies really are applied."""
  def residual_count(remat):
    cfg = dataclasses.replace(CFG, remat=remat)
    graphdef, weights = nnx.split(bert.EncoderLayer(cfg, rngs=nnx.Rngs(0)))
    x = jnp.ones((2, 12, 32))
    run = bert._layer_fn(graphdef, jnp.ones((2, 12), jnp.int32), remat)
    _, vjp = jax.vjp(lambda x: run(weights, x, jax.random.key(0)), x)
    return sum(leaf.size for leaf in jax.tree.leaves(vjp))
  none, dots, full = residual_count('none'), residual_count('dots'), residual_count('full')
  assert full < dots < none


def test_unknown_policy_is_one_clear_line():
  with pytest.raises(UserError, match=r"model.remat='everything' is unknown; choose one of "
                                      r'none, full, dots'):
    dataclasses.replace(CFG, remat='everything')
