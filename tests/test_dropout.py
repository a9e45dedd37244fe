"""The dropout mask: exact keep rate in expectation, independent draws, deterministic."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax.models import layers

SHAPE = (8, 4, 64, 64)  # 131,072 draws: the rate's standard error is ~8e-4 at 0.1


@pytest.mark.parametrize('rate', [0.1, 0.25, 0.5])
def test_keep_rate_matches_within_four_standard_errors(rate):
  for seed in range(3):
    mask = np.asarray(layers.keep_mask(jax.random.key(seed), rate, SHAPE))
    stderr = np.sqrt(rate * (1 - rate) / mask.size)
    assert abs(mask.mean() - (1 - rate)) < 4 * stderr, (seed, mask.mean())


def pair_keep_rate(a, b):
  """P(both kept): (1 - rate)**2 for independent masks."""
  return float((np.asarray(a) & np.asarray(b)).mean())


def test_masks_are_independent_across_layers_and_positions():
  rate, keep = 0.5, 0.5
  tolerance = 4 * np.sqrt(keep**2 * (1 - keep**2) / np.prod(SHAPE))
  # The encoder's per-layer keys: one split of the step's dropout key.
  layer_keys = jax.random.split(jax.random.fold_in(jax.random.key(0), 7), 4)
  masks = [layers.keep_mask(k, rate, SHAPE) for k in layer_keys]
  for other in masks[1:]:
    assert abs(pair_keep_rate(masks[0], other) - keep**2) < tolerance
  m = np.asarray(masks[0])
  # Neighbours on each axis, and the two halves of one hash (columns j and j + 32).
  for a, b in [(m[1:], m[:-1]), (m[:, 1:], m[:, :-1]), (m[..., 1:, :], m[..., :-1, :]),
               (m[..., 1:], m[..., :-1]), (m[..., :32], m[..., 32:])]:
    n = a.size
    assert abs(pair_keep_rate(a, b) - keep**2) < 4 * np.sqrt(keep**2 * (1 - keep**2) / n)


def test_deterministic_per_key_and_different_per_step():
  base = jax.random.key(42)
  step3 = layers.keep_mask(jax.random.fold_in(base, 3), 0.1, SHAPE)
  np.testing.assert_array_equal(step3, layers.keep_mask(jax.random.fold_in(base, 3), 0.1,
                                                        SHAPE))
  jitted = jax.jit(layers.keep_mask, static_argnums=(1, 2))
  np.testing.assert_array_equal(step3, jitted(jax.random.fold_in(base, 3), 0.1, SHAPE))
  step4 = layers.keep_mask(jax.random.fold_in(base, 4), 0.1, SHAPE)
  assert abs(float((step3 != step4).mean()) - 2 * 0.1 * 0.9) < 0.01


def test_odd_shapes():
  odd = layers.keep_mask(jax.random.key(1), 0.5, (3, 7))
  assert odd.shape == (3, 7) and odd.dtype == jnp.bool_
  assert layers.keep_mask(jax.random.key(1), 0.5, (5,)).shape == (5,)


def test_masks_past_the_counter_limit_do_not_repeat(monkeypatch):
  """Past 2**32 element pairs the flat counter would wrap; the leading axis then has a
  hash of its own (shown here with the limit lowered to 64 pairs)."""
  monkeypatch.setattr(layers, 'COUNTER_LIMIT', 64)
  mask = np.asarray(layers.keep_mask(jax.random.key(0), 0.5, (64, 256)))
  assert len({row.tobytes() for row in mask}) == 64
  assert abs(mask.mean() - 0.5) < 0.02
