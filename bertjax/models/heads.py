"""Heads over the encoder: masked-LM (tied decoder + bias) and next-sentence.

The MLM head runs only at the `positions_BP` chosen by masking: P is a fixed
max_predictions, so shapes stay static and the V-wide matmul costs P, not L, rows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.models import layers
from bertjax.models.bert import BertConfig, BertModel


class MaskedLMHead(nnx.Module):
  """dense + GELU + LayerNorm, then logits against the word embeddings + a bias."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.transform = layers.Dense(cfg.hidden_size, cfg.hidden_size, axes=('embed', 'mlp'),
                                  dtype=dt, rngs=rngs)
    self.layer_norm = layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, dtype=dt,
                                       rngs=rngs)
    self.bias = layers.param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), ('vocab',))

  def __call__(self, x_BPD, word_embeddings: layers.Embed):
    h_BPD = jax.nn.gelu(self.transform(x_BPD), approximate=False)
    h_BPD = self.layer_norm(h_BPD)
    logits_BPV = word_embeddings.attend(h_BPD) + self.bias[...].astype(h_BPD.dtype)
    return logits_BPV.astype(jnp.float32)


class BertForPreTraining(nnx.Module):
  """Encoder + MLM head (at masked positions) + NSP head on the pooled output."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.bert = BertModel(cfg, rngs=rngs)
    self.mlm = MaskedLMHead(cfg, rngs=rngs)
    self.nsp = layers.Dense(cfg.hidden_size, 2, axes=('embed', None), rngs=rngs)

  def __call__(self, input_ids_BL, token_type_ids_BL, attention_mask_BL, positions_BP, *,
               rngs: nnx.Rngs | None = None):
    x_BLD, pooled_BD = self.bert(input_ids_BL, token_type_ids_BL, attention_mask_BL,
                                 rngs=rngs)
    x_BPD = jnp.take_along_axis(x_BLD, positions_BP[..., None], axis=1)
    mlm_logits_BPV = self.mlm(x_BPD, self.bert.embeddings.word_embeddings)
    nsp_logits_B2 = self.nsp(pooled_BD).astype(jnp.float32)
    return mlm_logits_BPV, nsp_logits_B2
