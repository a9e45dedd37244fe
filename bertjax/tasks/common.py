"""What every fine-tuning task module provides, and the pieces they share.

A task module (`classify`, `tag`, `qa`) defines:

  MODEL_KIND                  the `heads.build` kind of its model
  DEFAULT_METRIC              the metric that picks the best checkpoint
  task_config()               its `config.task` group (a ConfigDict of defaults)
  load_split(task_cfg, split, tok, seq_len, label_names=None) -> Split
                              split is 'train' or 'eval'; `label_names` is the train
                              split's, so eval rows are encoded with the same ids
  logits(model, batch, rngs=None) -> the model's task logits (QA: start, end)
  sums_from_logits(batch, logits) -> dict of sums: at least loss_sum, count
                              (what the loss is averaged over) and tokens, plus
                              what `train_metrics` needs; traced under jit
  batch_sums(model, batch, rngs=None) -> sums_from_logits of the model's logits
  soft_targets(batch, logits) -> (distributions, weights): a tuple of arrays with
                              the classes last, and the weight of each distribution
                              (1 where the hard loss counts it): what a distilled
                              student matches its teacher on
  batch_count(batch)          the count of the whole batch, known before the model
                              runs (gradient accumulation divides by it)
  train_metrics(sums) -> dict of scalars logged during training
  predict(model, batch) -> dict of per-row arrays (leading dim B); traced under jit
  compute_metrics(outputs, split) -> dict[str, float]: `outputs` are `predict`'s
                              arrays stacked over all of `split.features`' rows, in order

Sums rather than means, so micro-batches, data shards and eval batches add up
exactly; the loss of a batch is loss_sum / count over the whole batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from bertjax.errors import UserError

IGNORE = -100  # label of positions without a target (as in transformers)


@dataclasses.dataclass
class Split:
  """One split of a task, encoded.

  `features`: int32/float32 arrays with one row per model input (a QA example with a
  long context gives several rows), all sent to the device as the batch.
  `meta`: whatever `compute_metrics` needs on the host (gold answers, word maps).
  `label_names`: the label of each class id (empty for regression and QA).
  """
  features: dict[str, np.ndarray]
  meta: Any = None
  label_names: tuple[str, ...] = ()
  source: str = ''

  def __len__(self) -> int:
    return len(next(iter(self.features.values())))


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int,
             pad_id: int) -> dict[str, np.ndarray]:
  """(ids, types) rows -> input_ids, token_type_ids, attention_mask (N, seq_len) int32."""
  out = {k: np.full((len(rows), seq_len), v, np.int32)
         for k, v in (('input_ids', pad_id), ('token_type_ids', 0), ('attention_mask', 0))}
  for i, (ids, types) in enumerate(rows):
    out['input_ids'][i, :len(ids)] = ids
    out['token_type_ids'][i, :len(ids)] = types
    out['attention_mask'][i, :len(ids)] = 1
  return out


def check_labels(label_names: Sequence[str], found: str, where: str) -> int:
  """The id of label `found`; an unknown label names the row and the known ones."""
  try:
    return label_names.index(found)
  except ValueError:
    raise UserError(f'{where}: unknown label {found!r}; the training data has '
                    f'{list(label_names)}') from None


def classification_sums(logits_NC, labels_N, weights_N):
  """Cross-entropy sums and correct counts over rows with weight 1."""
  import optax
  xent = optax.softmax_cross_entropy_with_integer_labels(logits_NC, jnp.maximum(labels_N, 0))
  return dict(loss_sum=(xent * weights_N).sum(), count=weights_N.sum(),
              correct=((logits_NC.argmax(-1) == labels_N) * weights_N).sum())
