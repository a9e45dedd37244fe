"""Layers with logically-named weights: the only file that names weight axes.

Axis names are logical ('vocab', 'embed', 'heads', 'kv', 'mlp'); `bertjax.sharding`
maps them onto the mesh, so model code never names a mesh axis. Parameters are
float32; `dtype` is the compute dtype the weights are cast to at use.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd as core_spmd

from bertjax import sharding

# BERT's initializer_range.
INIT_STDDEV = 0.02


def param(rngs: nnx.Rngs | None, init, shape: Sequence[int], axes: Sequence[str | None]):
  """A float32 nnx.Param whose axes carry the logical names `axes`."""
  # eager_sharding=False: weights are placed by jit's out_shardings (sharding.py), not
  # at construction, so the same module builds on one CPU or inside a sharded init.
  init = nnx.with_partitioning(init, tuple(axes), eager_sharding=False)
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, tuple(shape), jnp.float32))


def _tuple(x: int | Sequence[int]) -> tuple[int, ...]:
  return (x,) if isinstance(x, int) else tuple(x)


def _mix32(x):
  """A 32-bit integer hash (Wellons' lowbias32 finaliser): every input bit moves
  every output bit, in two multiplies and three shifts."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x21F0AAAD)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x735A2D97)
  return x ^ (x >> 15)


COUNTER_LIMIT = 2**32


def keep_mask(key, rate: float, shape: Sequence[int]):
  """A boolean mask, True with probability 1 - rate (to within 2**-17).

  Counter-based: each element pair's flat index, hashed twice with the key's two
  words mixed in, gives 32 bits cut into two 16-bit draws: ~10 integer ops a pair
  where a threefry block (as in `jax.random.bernoulli`) takes 20 rounds; calling a
  generator here, not JAX's default PRNG, keeps the choice in this one place. The
  counters are the elements' coordinates, so the mask shards like `shape`; a mask
  is a function of (key, shape) alone, so a resumed run draws the same masks.
  """
  k1, k2 = jax.random.bits(key, (2,), jnp.uint32)
  *lead, last = shape
  pairs = (*lead, -(-last // 2))
  # A flat uint32 counter would wrap (and masks repeat) past 2**32 pairs, e.g. attention
  # dropout at LAMB-sized batches: then the leading axis gets a hash of its own.
  wide = math.prod(pairs) > COUNTER_LIMIT
  counter, stride = jnp.zeros(pairs, jnp.uint32), 1
  for axis in reversed(range(1 if wide else 0, len(pairs))):
    counter = counter + jax.lax.broadcasted_iota(jnp.uint32, pairs, axis) * np.uint32(stride)
    stride *= pairs[axis]
  if wide:
    k2 = k2 ^ _mix32(jax.lax.broadcasted_iota(jnp.uint32, pairs, 0) + k1)
  bits = _mix32(_mix32(counter ^ k1) + k2)
  bits = jnp.concatenate([bits & np.uint32(0xFFFF), bits >> 16], axis=-1)[..., :last]
  return bits >= np.uint32(round(rate * 2**16))


def dropout(x, rate: float, rngs: nnx.Rngs | None):
  """Inverted dropout; `rngs=None` means evaluation (deterministic)."""
  if rngs is None or rate == 0.0:
    return x
  keep = keep_mask(rngs.dropout(), rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def gelu(x):
  """Exact (erf) GELU, as BERT's hidden_act='gelu' and PyTorch compute it.

  jax.nn.gelu(approximate=False) goes through erfc, which XLA evaluates on both
  sides of |x| = 1 and then selects; erf is one polynomial, cheaper on CPU.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


class Dense(nnx.Module):
  """y = x · W + b contracting the last len(in_features) axes of x.

  `axes` names the kernel's axes: input axes then output axes, e.g. a query
  projection is Dense(D, (H, Dh), axes=('embed', 'heads', 'kv')).
  """

  def __init__(self, in_features, out_features, *, axes, use_bias=True,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_features, self.out_features = _tuple(in_features), _tuple(out_features)
    assert len(axes) == len(self.in_features) + len(self.out_features), axes
    self.dtype = dtype
    self.kernel = param(rngs, nnx.initializers.normal(INIT_STDDEV),
                         self.in_features + self.out_features, axes)
    self.bias = (param(rngs, nnx.initializers.zeros, self.out_features,
                        axes[len(self.in_features):]) if use_bias else None)

  def __call__(self, x):
    # One 2-D matmul, (tokens, in) x (in, out): the N-D dot_general's gradients
    # contract several axes at once, which XLA CPU lowers to slower code.
    lead = x.shape[:x.ndim - len(self.in_features)]
    kernel = self.kernel[...].astype(self.dtype)
    x2 = x.astype(self.dtype).reshape(math.prod(lead), math.prod(self.in_features))
    y = (x2 @ kernel.reshape(x2.shape[1], -1)).reshape(*lead, *self.out_features)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """A (num_embeddings, features) table; `attend` is the tied output projection."""

  def __init__(self, num_embeddings: int, features: int, *, axes, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = param(rngs, nnx.initializers.normal(INIT_STDDEV),
                            (num_embeddings, features), axes)

  def __call__(self, ids):
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x):
    return jnp.einsum('...d,vd->...v', x.astype(self.dtype),
                      self.embedding[...].astype(self.dtype))


class LayerNorm(nnx.Module):
  """LayerNorm whose statistics are float32 whatever the compute dtype."""

  def __init__(self, features: int, *, axis_name='embed', eps=1e-12, dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.eps, self.dtype = eps, dtype
    self.scale = param(rngs, nnx.initializers.ones, (features,), (axis_name,))
    self.bias = param(rngs, nnx.initializers.zeros, (features,), (axis_name,))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


def active_spec(axes: Sequence[str | None]):
  """The PartitionSpec for logical `axes` under the active mesh and rules, or None
  when `bertjax.sharding.activate` is not in effect (one device, no mesh)."""
  rules = core_spmd.get_logical_axis_rules()
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return None
  return sharding.logical_to_spec(axes, rules)


def constrain(x, axes: Sequence[str | None]):
  """Constrains an activation's sharding by logical axis names (no-op without a mesh)."""
  spec = active_spec(axes)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)
