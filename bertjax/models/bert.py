"""BERT encoder in Flax NNX, laid out like `transformers`' BertModel (post-LN).

Shapes: B batch, L length, D hidden, H heads, K head dim, F feed-forward, V vocab.
Attention masks come as `attention_mask_BL`: 0 marks padding; for packed sequences
each document has its own positive id (segment_ids), and tokens attend only within
their own document. A 0/1 mask is the one-document case, as in `transformers`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bertjax.errors import UserError
from bertjax.models import attention, layers

# A layer's matmul outputs, tagged with these names where they are computed
# (SelfAttention, EncoderLayer); the 'dots' policy saves exactly these.
MATMUL_NAMES = ('query', 'key', 'value', 'attention_output', 'intermediate', 'ffn_output')

# `model.remat`: what each encoder layer keeps for the backward pass; the rest is
# recomputed there. 'none' keeps everything (no rematerialisation). On XLA CPU the
# saving shows only with scan_layers: unrolled, its scheduler runs the recomputation
# early and keeps the activations alive anyway.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    # The six projections: recomputes attention scores, softmax, GELU, LayerNorms
    # and dropout, the activations that grow with L² or are cheap to redo.
    'dots': jax.checkpoint_policies.save_only_these_names(*MATMUL_NAMES),
    # JAX's policy: every matmul without batch dimensions (here the same six,
    # whether named or not; the attention einsums have batch dimensions).
    'dots_with_no_batch_dims': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  num_layers: int = 12
  hidden_size: int = 768
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  dtype: str = 'float32'
  attention: str = 'xla'
  # Run the layers as one lax.scan body (compile time independent of depth); the
  # parameters stay one subtree per layer either way.
  scan_layers: bool = False
  # The embedding table and MLM decoder have `padded_vocab_size` rows, the vocabulary
  # rounded up to this multiple: the V-wide matmuls tile evenly and 'vocab' shards on
  # any mesh. The padded logits are masked out (heads.MaskedLMHead); 1 turns it off.
  vocab_multiple: int = 128
  # Activation checkpointing per encoder layer: one of REMAT_POLICIES.
  remat: str = 'none'
  # Pre-training adds SpanBERT's span-boundary head (heads.SpanBoundaryHead).
  sbo: bool = False

  def __post_init__(self):
    if self.remat not in REMAT_POLICIES:
      raise UserError(f'model.remat={self.remat!r} is unknown; choose one of '
                      f'{", ".join(REMAT_POLICIES)}')
    if self.attention not in attention.IMPLEMENTATIONS:
      raise ValueError(f'unknown attention implementation {self.attention!r}; choose one '
                       f'of {attention.IMPLEMENTATIONS}')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not a multiple of '
                       f'num_heads {self.num_heads}')

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'BertConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


class Embeddings(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.word_embeddings = layers.Embed(cfg.padded_vocab_size, cfg.hidden_size,
                                        axes=('vocab', 'embed'), dtype=dt, rngs=rngs)
    self.position_embeddings = layers.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                            axes=(None, 'embed'), dtype=dt, rngs=rngs)
    self.token_type_embeddings = layers.Embed(cfg.type_vocab_size, cfg.hidden_size,
                                              axes=(None, 'embed'), dtype=dt, rngs=rngs)
    self.layer_norm = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dt,
                                       rngs=rngs)
    self.dropout_rate = cfg.dropout_rate

  def __call__(self, input_ids_BL, token_type_ids_BL, position_ids_BL, rngs):
    x_BLD = (self.word_embeddings(input_ids_BL)
             + self.token_type_embeddings(token_type_ids_BL)
             + self.position_embeddings(position_ids_BL))
    x_BLD = self.layer_norm(x_BLD)
    return layers.dropout(x_BLD, self.dropout_rate, rngs)


class SelfAttention(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt, d, h, k = cfg.compute_dtype, cfg.hidden_size, cfg.num_heads, cfg.head_dim
    qkv_axes = ('embed', 'heads', 'kv')
    self.query = layers.Dense(d, (h, k), axes=qkv_axes, dtype=dt, rngs=rngs)
    self.key = layers.Dense(d, (h, k), axes=qkv_axes, dtype=dt, rngs=rngs)
    self.value = layers.Dense(d, (h, k), axes=qkv_axes, dtype=dt, rngs=rngs)
    self.output = layers.Dense((h, k), d, axes=('heads', 'kv', 'embed'), dtype=dt, rngs=rngs)
    self.implementation = cfg.attention
    self.attention_dropout_rate = cfg.attention_dropout_rate

  def __call__(self, x_BLD, attention_mask_BL, rngs, output_attentions: bool = False):
    """(output_BLD, probs_BHLL or None)."""
    axes = ('batch', 'length', 'heads', 'kv')
    q_BLHK = layers.constrain(checkpoint_name(self.query(x_BLD), 'query'), axes)
    k_BLHK = layers.constrain(checkpoint_name(self.key(x_BLD), 'key'), axes)
    v_BLHK = layers.constrain(checkpoint_name(self.value(x_BLD), 'value'), axes)
    out_BLHK, probs_BHLL = attention.attend(
        self.implementation, q_BLHK, k_BLHK, v_BLHK, attention_mask_BL,
        dropout_rate=self.attention_dropout_rate, rngs=rngs,
        output_attentions=output_attentions)
    out_BLD = self.output(layers.constrain(out_BLHK, axes))
    return checkpoint_name(out_BLD, 'attention_output'), probs_BHLL


class EncoderLayer(nnx.Module):
  """Post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.attention_layer_norm = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps,
                                                 dtype=dt, rngs=rngs)
    self.intermediate = layers.Dense(cfg.hidden_size, cfg.intermediate_size,
                                     axes=('embed', 'mlp'), dtype=dt, rngs=rngs)
    self.output = layers.Dense(cfg.intermediate_size, cfg.hidden_size,
                               axes=('mlp', 'embed'), dtype=dt, rngs=rngs)
    self.output_layer_norm = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps,
                                              dtype=dt, rngs=rngs)
    self.dropout_rate = cfg.dropout_rate

  def __call__(self, x_BLD, attention_mask_BL, rngs, output_attentions: bool = False):
    """(x_BLD, attention probs_BHLL or None)."""
    attn_BLD, probs_BHLL = self.attention(x_BLD, attention_mask_BL, rngs, output_attentions)
    attn_BLD = layers.dropout(attn_BLD, self.dropout_rate, rngs)
    x_BLD = self.attention_layer_norm(x_BLD + attn_BLD)
    h_BLF = layers.gelu(checkpoint_name(self.intermediate(x_BLD), 'intermediate'))
    h_BLF = layers.constrain(h_BLF, ('batch', 'length', 'mlp'))
    ffn_BLD = layers.dropout(checkpoint_name(self.output(h_BLF), 'ffn_output'),
                             self.dropout_rate, rngs)
    x_BLD = self.output_layer_norm(x_BLD + ffn_BLD)
    return layers.constrain(x_BLD, ('batch', 'length', 'embed')), probs_BHLL


def _dropout_rngs(key):
  return None if key is None else nnx.Rngs(dropout=key)


def _layer_fn(graphdef, attention_mask_BL, remat: str, output_attentions: bool = False):
  """(weights, x_BLD, dropout key) -> (x_BLD, probs_BHLL or None) for one layer,
  rematerialised per `remat`.

  A pure function of the layer's weights, so the unrolled and the scanned encoder
  checkpoint alike; the dropout masks are recomputed from the same key.
  """
  def run(weights, x_BLD, key):
    return nnx.merge(graphdef, weights)(x_BLD, attention_mask_BL, _dropout_rngs(key),
                                        output_attentions)
  policy = REMAT_POLICIES[remat]
  return run if policy is None else jax.checkpoint(run, policy=policy)


class BertModel(nnx.Module):
  """Embeddings, encoder and pooler; returns (sequence_output_BLD, pooled_BD), and
  with `output_attentions=True` a third item: one (B, H, L, L) array of attention
  probabilities per layer, as `transformers`' `attentions`.

  `add_pooler=False` drops the pooler (pooled_BD is None), as `transformers` does
  for token classification and QA, so their checkpoints have no pooler weights.
  """

  def __init__(self, cfg: BertConfig, *, add_pooler: bool = True, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.pooler = (layers.Dense(cfg.hidden_size, cfg.hidden_size, axes=('embed', 'mlp'),
                                dtype=cfg.compute_dtype, rngs=rngs) if add_pooler else None)

  def __call__(self, input_ids_BL, token_type_ids_BL=None, attention_mask_BL=None,
               position_ids_BL=None, *, rngs: nnx.Rngs | None = None,
               output_attentions: bool = False):
    """`rngs` carrying a 'dropout' stream turns dropout on (training)."""
    batch, length = input_ids_BL.shape
    if token_type_ids_BL is None:
      token_type_ids_BL = jnp.zeros_like(input_ids_BL)
    if attention_mask_BL is None:
      attention_mask_BL = jnp.ones_like(input_ids_BL)
    if position_ids_BL is None:
      position_ids_BL = jnp.broadcast_to(jnp.arange(length), (batch, length))
    x_BLD = self.embeddings(input_ids_BL, token_type_ids_BL, position_ids_BL, rngs)
    x_BLD = layers.constrain(x_BLD, ('batch', 'length', 'embed'))
    # One dropout key per layer, so the scanned and unrolled encoders draw alike.
    keys = None if rngs is None else jax.random.split(rngs.dropout(), len(self.layers))
    if self.config.scan_layers:
      x_BLD, attentions = self._scan(x_BLD, attention_mask_BL, keys, output_attentions)
    else:
      attentions = []
      for i, layer in enumerate(self.layers):
        graphdef, weights = nnx.split(layer)
        run = _layer_fn(graphdef, attention_mask_BL, self.config.remat, output_attentions)
        x_BLD, probs_BHLL = run(weights, x_BLD, None if keys is None else keys[i])
        attentions.append(probs_BHLL)
    pooled_BD = jnp.tanh(self.pooler(x_BLD[:, 0])) if self.pooler is not None else None
    if output_attentions:
      return x_BLD, pooled_BD, tuple(attentions)
    return x_BLD, pooled_BD

  def _scan(self, x_BLD, attention_mask_BL, keys, output_attentions):
    """The layers as one scan body over their weights, stacked here (traced once).

    Stacking inside the forward keeps the parameter tree per layer (checkpoints,
    `transformers` export and sharding rules are the unscanned ones); the gradient
    of the stack hands each layer its slice. Costs one copy of the encoder weights
    per step.
    """
    run = _layer_fn(nnx.graphdef(self.layers[0]), attention_mask_BL, self.config.remat,
                    output_attentions)
    stacked = jax.tree.map(lambda *ws: jnp.stack(ws), *(nnx.state(l) for l in self.layers))

    def body(x_BLD, weights_and_key):
      weights, key = weights_and_key
      return run(weights, x_BLD, key)

    x_BLD, probs_NBHLL = jax.lax.scan(body, x_BLD, (stacked, keys))
    return x_BLD, (None if probs_NBHLL is None else tuple(probs_NBHLL))
