"""The pre-training task: the model it builds, its loss and its metrics.

Batch keys: input_ids, token_type_ids, attention_mask (B, L); mlm_positions,
mlm_targets, mlm_weights (B, P); nsp_labels (B,).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bertjax.models.bert import BertConfig
from bertjax.models.heads import BertForPreTraining


def build_model(model_cfg: BertConfig, seed_key) -> BertForPreTraining:
  return BertForPreTraining(model_cfg, rngs=nnx.Rngs(params=seed_key))


def loss_and_metrics(model: BertForPreTraining, batch, rngs: nnx.Rngs | None):
  """Returns (loss, metrics); loss = weighted-mean MLM loss + mean NSP loss, as BERT."""
  mlm_logits_BPV, nsp_logits_B2 = model(
      batch['input_ids'], batch['token_type_ids'], batch['attention_mask'],
      batch['mlm_positions'], rngs=rngs)
  weights_BP = batch['mlm_weights']
  num_predictions = jnp.maximum(weights_BP.sum(), 1.0)
  mlm_loss = (optax.softmax_cross_entropy_with_integer_labels(
      mlm_logits_BPV, batch['mlm_targets']) * weights_BP).sum() / num_predictions
  nsp_loss = optax.softmax_cross_entropy_with_integer_labels(
      nsp_logits_B2, batch['nsp_labels']).mean()
  mlm_correct = (mlm_logits_BPV.argmax(-1) == batch['mlm_targets']) * weights_BP
  metrics = dict(
      loss=mlm_loss + nsp_loss,
      mlm_loss=mlm_loss,
      nsp_loss=nsp_loss,
      mlm_accuracy=mlm_correct.sum() / num_predictions,
      nsp_accuracy=(nsp_logits_B2.argmax(-1) == batch['nsp_labels']).mean(),
      tokens=(batch['attention_mask'] > 0).sum(),
  )
  return metrics['loss'], metrics


def eval_counts(model: BertForPreTraining, batch):
  """Sums for exact held-out metrics over many batches (ratios are taken at the end)."""
  mlm_logits_BPV, nsp_logits_B2 = model(
      batch['input_ids'], batch['token_type_ids'], batch['attention_mask'],
      batch['mlm_positions'])
  weights_BP = batch['mlm_weights']
  xent_BP = optax.softmax_cross_entropy_with_integer_labels(mlm_logits_BPV,
                                                            batch['mlm_targets'])
  return dict(
      mlm_loss_sum=(xent_BP * weights_BP).sum(),
      mlm_correct=((mlm_logits_BPV.argmax(-1) == batch['mlm_targets']) * weights_BP).sum(),
      mlm_count=weights_BP.sum(),
      nsp_correct=(nsp_logits_B2.argmax(-1) == batch['nsp_labels']).sum(),
      nsp_count=jnp.asarray(batch['nsp_labels'].shape[0], jnp.float32),
  )


def eval_summary(totals) -> dict[str, float]:
  return dict(
      mlm_loss=float(totals['mlm_loss_sum'] / totals['mlm_count']),
      mlm_accuracy=float(totals['mlm_correct'] / totals['mlm_count']),
      nsp_accuracy=float(totals['nsp_correct'] / totals['nsp_count']),
  )
