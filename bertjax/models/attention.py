"""Attention implementations behind one signature, chosen by `model.attention`.

- `xla`: plain einsums and a float32 softmax; the reference, runs everywhere.
- `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')`, cuDNN's fused
  flash attention on NVIDIA GPUs.
- `splash`: the Pallas splash-attention kernel for TPUs, with packed documents as
  segment ids; elsewhere it runs in Pallas interpret mode (slow, for tests).

All take q, k, v as (B, L, H, K) and `attention_mask_BL` (0 = padding, else the
token's document id) and return (B, L, H, K). Real tokens see exactly the real
tokens of their own document in every implementation; what padding queries see
differs (their outputs are never used), `xla` matching `transformers` there too.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from bertjax.models import layers

IMPLEMENTATIONS = ('xla', 'cudnn', 'splash')


def attention_bias(attention_mask_BL, dtype):
  """Additive (B, 1, L, L) bias: 0 where query may attend key, dtype-min elsewhere.

  A key is visible when it is not padding and lies in the query's document; a padding
  query (id 0) sees every non-padding key, as `transformers` does, so padded rows
  stay finite and match the reference.
  """
  q = attention_mask_BL[:, :, None]
  k = attention_mask_BL[:, None, :]
  visible_BLL = (k > 0) & ((q == k) | (q == 0))
  return jnp.where(visible_BLL, 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None]


def xla_attention(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL, dropout_rate=0.0, rngs=None):
  """(output_BLHK, probs_BHLL): the probabilities as they weigh the values (after
  dropout, as `transformers` returns them); XLA drops them when unused."""
  scale = q_BLHK.shape[-1] ** -0.5
  # Heads ahead of length: over (B, L, H, K) operands XLA CPU fused the attention into
  # a kernel 2-3x slower (docs/PERFORMANCE.md, "CPU inference", has the command).
  q_BHLK, k_BHLK, v_BHLK = (jnp.swapaxes(x, 1, 2) for x in (q_BLHK * scale, k_BLHK, v_BLHK))
  logits_BHLL = jnp.einsum('bhqk,bhsk->bhqs', q_BHLK, k_BHLK)
  # Softmax statistics in float32 whatever the compute dtype.
  bias_B1LL = attention_bias(attention_mask_BL, jnp.float32)
  logits_BHLL = logits_BHLL.astype(jnp.float32) + bias_B1LL
  probs_BHLL = jax.nn.softmax(logits_BHLL, axis=-1).astype(q_BLHK.dtype)
  probs_BHLL = layers.dropout(probs_BHLL, dropout_rate, rngs)
  return jnp.swapaxes(jnp.einsum('bhqs,bhsk->bhqk', probs_BHLL, v_BHLK), 1, 2), probs_BHLL


def cudnn_attention(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL):
  bias_B1LL = attention_bias(attention_mask_BL, q_BLHK.dtype)
  return jax.nn.dot_product_attention(q_BLHK, k_BLHK, v_BLHK, bias=bias_B1LL,
                                      implementation='cudnn')


def _splash_kernel(length: int, heads: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as kernel, splash_attention_mask as mask_lib)
  full = mask_lib.MultiHeadMask([mask_lib.FullMask((length, length))] * heads)
  return kernel.make_splash_mha(full, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL):
  length = q_BLHK.shape[1]
  if length % 128:
    raise ValueError(f'splash attention needs a sequence length divisible by 128, got '
                     f'{length}; set data.seq_len accordingly or use attention="xla"')
  interpret = jax.default_backend() != 'tpu'
  local = functools.partial(_splash_local, interpret=interpret)
  qkv_spec = layers.active_spec(('batch', 'length', 'heads', 'kv'))
  if qkv_spec is not None:  # a Pallas kernel sees one device's shard: shard_map it
    local = jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(),
                          in_specs=(qkv_spec,) * 3 + (layers.active_spec(('batch', 'length')),),
                          out_specs=qkv_spec, check_vma=False)
  return local(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL)


def _splash_local(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL, *, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel
  _, length, heads, head_dim = q_BLHK.shape
  kernel = _splash_kernel(length, heads, interpret)
  # Padding becomes a document of its own: real tokens never see it.
  segments = splash_attention_kernel.SegmentIds(attention_mask_BL, attention_mask_BL)
  to_bhlk = lambda x: jnp.swapaxes(x, 1, 2)
  out_BHLK = jax.vmap(kernel)(to_bhlk(q_BLHK * head_dim ** -0.5), to_bhlk(k_BLHK),
                              to_bhlk(v_BLHK), segment_ids=segments)
  return jnp.swapaxes(out_BHLK, 1, 2)


_warned_fused_probs = set()


def attend(implementation: str, q_BLHK, k_BLHK, v_BLHK, attention_mask_BL, *,
           dropout_rate: float, rngs, output_attentions: bool = False):
  """Dispatches to an implementation; returns (output_BLHK, probs_BHLL or None).

  The fused kernels have no attention dropout and never expose the probabilities:
  asked for them, the call runs `xla` instead (and says so once).
  """
  if output_attentions and implementation != 'xla':
    if implementation not in _warned_fused_probs:
      _warned_fused_probs.add(implementation)
      logging.warning('attention=%r does not expose attention probabilities; calls '
                      'with output_attentions=True run the xla attention', implementation)
    implementation = 'xla'
  if implementation == 'xla':
    out_BLHK, probs_BHLL = xla_attention(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL,
                                         dropout_rate, rngs)
    return out_BLHK, probs_BHLL if output_attentions else None
  if dropout_rate and rngs is not None:
    raise ValueError(f'attention={implementation!r} has no attention-probability dropout; '
                     'set model.attention_dropout_rate=0 (hidden dropout still applies) '
                     'or use attention="xla"')
  if implementation == 'cudnn':
    return cudnn_attention(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL), None
  if implementation == 'splash':
    return splash_attention(q_BLHK, k_BLHK, v_BLHK, attention_mask_BL), None
  raise ValueError(f'unknown attention implementation {implementation!r}; choose one of '
                   f'{IMPLEMENTATIONS}')
