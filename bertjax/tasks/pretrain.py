"""The pre-training task: the model it builds, its loss and its metrics.

Batch keys: input_ids, token_type_ids, attention_mask, position_ids (B, L);
mlm_positions, mlm_targets, mlm_weights (B, P); nsp_labels (B,), the sentence-level
label (NSP or SOP; -1 where the row has none); with the span-boundary head
(`model.sbo`, span masking) also sbo_left, sbo_right, sbo_offset (B, P): the
boundary positions around each prediction's span and its 0-based place in it.

SpanBERT's loss is MLM + SBO, both means over the same predictions (the SBO head
predicts every masked token of a span, so its count is the MLM count).

Everything is computed as sums first (`batch_sums`), so micro-batches of a
gradient-accumulation step, data shards and eval batches add up exactly; ratios
are taken once at the end (`metrics_from_sums`, `loss_from_sums`).

The MLM logits span the padded vocabulary; the head sets the padding columns to
`heads.PADDED_LOGIT`, so the softmax, the loss and the accuracy see only real tokens.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from bertjax.models.bert import BertConfig
from bertjax.models.heads import BertForPreTraining


def build_model(model_cfg: BertConfig, seed_key) -> BertForPreTraining:
  return BertForPreTraining(model_cfg, rngs=nnx.Rngs(params=seed_key))


def batch_sums(model: BertForPreTraining, batch, rngs: nnx.Rngs | None = None):
  x_BLD, pooled_BD = model.bert(batch['input_ids'], batch['token_type_ids'],
                                batch['attention_mask'], batch['position_ids'], rngs=rngs)
  return sums_from_outputs(model, batch, x_BLD,
                           model.head(x_BLD, pooled_BD, batch['mlm_positions']))


def sums_from_outputs(model: BertForPreTraining, batch, x_BLD, head_logits):
  """The sums of `batch_sums` from encoder outputs and (MLM, NSP) logits already
  computed (distillation computes them once for its own loss too)."""
  mlm_logits_BPV, nsp_logits_B2 = head_logits
  weights_BP = batch['mlm_weights']
  mlm_xent_BP = optax.softmax_cross_entropy_with_integer_labels(mlm_logits_BPV,
                                                                batch['mlm_targets'])
  # Label -1: no sentence objective for this row (packed rows, objective 'none').
  labels_B = batch['nsp_labels']
  nsp_weights_B = (labels_B >= 0).astype(jnp.float32)
  nsp_xent_B = optax.softmax_cross_entropy_with_integer_labels(nsp_logits_B2,
                                                               jnp.maximum(labels_B, 0))
  sums = dict(
      mlm_loss_sum=(mlm_xent_BP * weights_BP).sum(),
      mlm_correct=((mlm_logits_BPV.argmax(-1) == batch['mlm_targets']) * weights_BP).sum(),
      mlm_count=weights_BP.sum(),
      nsp_loss_sum=(nsp_xent_B * nsp_weights_B).sum(),
      nsp_correct=((nsp_logits_B2.argmax(-1) == labels_B) * nsp_weights_B).sum(),
      nsp_count=nsp_weights_B.sum(),
      tokens=(batch['attention_mask'] > 0).sum().astype(jnp.float32),
  )
  if model.sbo is not None:
    if 'sbo_left' not in batch:
      raise ValueError('model.sbo needs span masking: the batch has no sbo_left/sbo_right/'
                       'sbo_offset (config_checks refuses sbo with another masking kind)')
    sbo_logits_BPV = model.sbo(x_BLD, batch['sbo_left'], batch['sbo_right'],
                               batch['sbo_offset'], model.bert.embeddings.word_embeddings)
    sbo_xent_BP = optax.softmax_cross_entropy_with_integer_labels(sbo_logits_BPV,
                                                                  batch['mlm_targets'])
    sums.update(
        sbo_loss_sum=(sbo_xent_BP * weights_BP).sum(),
        sbo_correct=((sbo_logits_BPV.argmax(-1) == batch['mlm_targets']) * weights_BP).sum())
  return sums


def loss_from_sums(sums, mlm_count, nsp_count):
  """BERT's loss: mean MLM loss over the predictions plus mean NSP loss (plus the mean
  SBO loss over the same predictions when the model has the span-boundary head).

  `mlm_count`/`nsp_count` are the whole batch's, so a micro-batch contributes exactly
  its share of the full batch's loss.
  """
  predicted = sums['mlm_loss_sum'] + sums.get('sbo_loss_sum', 0.0)
  return (predicted / jnp.maximum(mlm_count, 1.0)
          + sums['nsp_loss_sum'] / jnp.maximum(nsp_count, 1.0))


def metrics_from_sums(sums) -> dict:
  mlm_count = jnp.maximum(sums['mlm_count'], 1.0)
  nsp_count = jnp.maximum(sums['nsp_count'], 1.0)
  metrics = dict(
      loss=loss_from_sums(sums, sums['mlm_count'], sums['nsp_count']),
      mlm_loss=sums['mlm_loss_sum'] / mlm_count,
      nsp_loss=sums['nsp_loss_sum'] / nsp_count,
      mlm_accuracy=sums['mlm_correct'] / mlm_count,
      nsp_accuracy=sums['nsp_correct'] / nsp_count,
  )
  if 'sbo_loss_sum' in sums:
    metrics.update(sbo_loss=sums['sbo_loss_sum'] / mlm_count,
                   sbo_accuracy=sums['sbo_correct'] / mlm_count)
  return metrics
