"""Sequence classification and regression: GLUE through tfds, or any TSV file.

A row is one text or a pair ([CLS] a [SEP] b [SEP]) and a label. Sources:
- `tfds:glue/NAME:SPLIT` (prepared under TFDS_DATA_DIR): the text fields and the
  metrics GLUE reports for that task are known (`GLUE`); labels are its ClassLabel.
- a TSV path or glob: `text_columns` (one or two header names, or 0-based indices
  with `header=False`) and `label_column`; label names are collected from the
  training file (sorted) unless `labels` lists them; `regression` reads floats.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import numpy as np

from bertjax.data import tfds_source, tsv
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.tasks import common

MODEL_KIND = 'sequence_classification'
DEFAULT_METRIC = 'accuracy'

# GLUE task -> (text fields, the metrics GLUE reports, regression).
GLUE = {
    'cola': (('sentence',), ('matthews_corr',), False),
    'sst2': (('sentence',), ('accuracy',), False),
    'mrpc': (('sentence1', 'sentence2'), ('f1', 'accuracy'), False),
    'qqp': (('question1', 'question2'), ('accuracy', 'f1'), False),
    'stsb': (('sentence1', 'sentence2'), ('pearson', 'spearman'), True),
    'mnli': (('premise', 'hypothesis'), ('accuracy',), False),
    'qnli': (('question', 'sentence'), ('accuracy',), False),
    'rte': (('sentence1', 'sentence2'), ('accuracy',), False),
    'wnli': (('sentence1', 'sentence2'), ('accuracy',), False),
    'ax': (('premise', 'hypothesis'), ('matthews_corr',), False),
}


def task_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind='classify',
      train='',  # a TSV path/glob, tfds:glue/NAME:train, or 'embedded'
      # With train='embedded': which generated task (data/embedded_tasks.py).
      embedded='country',
      eval='',   # e.g. dev.tsv, or tfds:glue/NAME:validation
      text_columns=('sentence',),  # one or two; 0-based indices ('0') when header=False
      label_column='label',
      header=True,
      labels=(),  # label names in id order; empty: the training file's, sorted
      regression=False,
      metric=DEFAULT_METRIC,  # picks the best checkpoint
  ))


def glue_task(spec: str) -> str | None:
  """'glue' task name of a `tfds:glue/NAME[:SPLIT]` spec, else None."""
  if not spec.startswith('tfds:glue/'):
    return None
  name = spec[len('tfds:glue/'):].partition(':')[0]
  if name.startswith('mnli'):
    return 'mnli'
  if name not in GLUE:
    raise UserError(f'unknown GLUE task {name!r} in {spec!r}; choose one of {sorted(GLUE)}')
  return name


def _glue_rows(spec: str):
  """(text_a, text_b or None, label id or float, where) from a prepared glue split."""
  fields, _, regression = GLUE[glue_task(spec)]
  for i, example in enumerate(tfds_source.tfds_examples(spec[len('tfds:'):])):
    texts = [_text(example[f]) for f in fields]
    label = example['label']
    yield (texts[0], texts[1] if len(texts) > 1 else None,
           float(label) if regression else int(label), f'{spec} example {i}')


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _column(name, header: bool):
  """Without a header, columns are 0-based indices (ints, or digits as text)."""
  return int(name) if not header and str(name).isdigit() else name


def _tsv_rows(task_cfg, pattern: str):
  columns = [_column(c, task_cfg.header) for c in task_cfg.text_columns]
  if not 1 <= len(columns) <= 2:
    raise UserError(f'task.text_columns must name one or two columns, got {columns}')
  wanted = {'text_a': columns[0], 'label': _column(task_cfg.label_column, task_cfg.header)}
  if len(columns) == 2:
    wanted['text_b'] = columns[1]
  for path, row_number, row in tsv.read_rows(pattern, wanted, header=task_cfg.header):
    yield row['text_a'], row.get('text_b'), row['label'].strip(), f'{path}, row {row_number}'


def load_split(task_cfg, split: str, tok, seq_len: int, label_names=None) -> common.Split:
  source = task_cfg[split]
  if not source:
    raise UserError(f'task.{split} is empty: set --config.task.{split}=PATH.tsv (or '
                    'tfds:glue/NAME:SPLIT)')
  glue = glue_task(source)
  rows = list(_glue_rows(source) if glue else _tsv_rows(task_cfg, source))
  if not rows:
    raise UserError(f'{source} holds no examples')
  regression = GLUE[glue][2] if glue else task_cfg.regression
  if regression:
    label_names, labels = (), np.array([_float_label(r[2], r[3]) for r in rows], np.float32)
  elif glue:
    label_names = label_names or tuple(tfds_source.open_tfds(source[len('tfds:'):])[1][
        'label'].names)
    labels = np.array([r[2] for r in rows], np.int32)
  else:
    label_names = tuple(label_names or task_cfg.labels or sorted({r[2] for r in rows}))
    labels = np.array([common.check_labels(label_names, r[2], r[3]) for r in rows], np.int32)
  encoded = [tokenizer_lib.encode_pair(tok, tok.encode(a),
                                       tok.encode(b) if b is not None else None, seq_len)
             for a, b, _, _ in rows]
  features = common.pad_rows(encoded, seq_len, tok.pad_id)
  features['labels'] = labels
  return common.Split(features, meta=dict(regression=regression, glue=glue),
                      label_names=label_names, source=source)


def _float_label(raw, where: str) -> float:
  try:
    value = float(raw)
  except ValueError:
    raise UserError(f'{where}: label {raw!r} is not a number; a regression task needs '
                    'numeric labels (or set task.regression=false)') from None
  if not math.isfinite(value):
    raise UserError(f'{where}: label {raw!r} is not finite')
  return value


def logits(model, batch, rngs=None):
  return model(batch['input_ids'], batch['token_type_ids'], batch['attention_mask'],
               rngs=rngs)


def batch_count(batch):
  return jnp.float32(batch['input_ids'].shape[0])


def batch_sums(model, batch, rngs=None):
  return sums_from_logits(batch, logits(model, batch, rngs))


def sums_from_logits(batch, logits_BC):
  tokens = batch['attention_mask'].sum().astype(jnp.float32)
  if logits_BC.shape[-1] == 1:  # regression: mean squared error
    error_B = logits_BC[:, 0] - batch['labels']
    return dict(loss_sum=(error_B ** 2).sum(), count=batch_count(batch), tokens=tokens)
  weights_B = jnp.ones(batch['labels'].shape, jnp.float32)
  return dict(**common.classification_sums(logits_BC, batch['labels'], weights_B),
              tokens=tokens)


def soft_targets(batch, logits_BC):
  """One distribution per row (a regression row: its one value)."""
  return (logits_BC,), jnp.ones(logits_BC.shape[:1], jnp.float32)


def train_metrics(sums) -> dict:
  count = jnp.maximum(sums['count'], 1.0)
  metrics = dict(loss=sums['loss_sum'] / count)
  if 'correct' in sums:
    metrics['accuracy'] = sums['correct'] / count
  return metrics


def predict(model, batch) -> dict:
  return dict(logits=logits(model, batch))


def compute_metrics(outputs, split: common.Split) -> dict[str, float]:
  """GLUE's metrics: accuracy, F1 (of class 1 for two classes, else macro), Matthews
  correlation; for regression Pearson and Spearman correlation."""
  labels = split.features['labels']
  logits_NC = outputs['logits']
  if split.meta['regression']:
    predictions = logits_NC[:, 0]
    return dict(pearson=pearson(predictions, labels), spearman=spearman(predictions, labels),
                mse=float(np.mean((predictions - labels) ** 2)))
  predictions = logits_NC.argmax(-1)
  num_classes = max(len(split.label_names), logits_NC.shape[-1])
  return dict(accuracy=float(np.mean(predictions == labels)),
              f1=f1(predictions, labels, num_classes),
              matthews_corr=matthews_corr(predictions, labels, num_classes))


def _confusion(predictions, labels, num_classes: int) -> np.ndarray:
  return np.bincount(labels * num_classes + predictions,
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def f1(predictions, labels, num_classes: int) -> float:
  """F1 of class 1 when there are two classes (GLUE's MRPC/QQP), else macro F1."""
  c = _confusion(predictions, labels, num_classes).astype(np.float64)
  tp = np.diag(c)
  precision = np.divide(tp, c.sum(0), out=np.zeros_like(tp), where=c.sum(0) > 0)
  recall = np.divide(tp, c.sum(1), out=np.zeros_like(tp), where=c.sum(1) > 0)
  denom = precision + recall
  per_class = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return float(per_class[1] if num_classes == 2 else per_class.mean())


def matthews_corr(predictions, labels, num_classes: int) -> float:
  """Multi-class Matthews correlation (Gorodkin's R_K), as scikit-learn computes it."""
  c = _confusion(predictions, labels, num_classes).astype(np.float64)
  t, p, n = c.sum(1), c.sum(0), c.sum()
  cov_tp = np.trace(c) * n - t @ p
  cov_pp, cov_tt = n * n - p @ p, n * n - t @ t
  return float(cov_tp / np.sqrt(cov_pp * cov_tt)) if cov_pp * cov_tt > 0 else 0.0


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else 0.0


def _ranks(x) -> np.ndarray:
  """Ranks with ties given their average rank (as scipy.stats.rankdata)."""
  x = np.asarray(x)
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(len(x))
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  return sums[inverse] / counts[inverse]


def spearman(x, y) -> float:
  return pearson(_ranks(x), _ranks(y))
