"""`validate(config)`: every value checked before any work, one line naming the fix.

The CLI calls it after `--config` overrides, so a bad preset, range, choice or
backend fails with exit 2 before a tokenizer is trained or an array allocated.
Pre-training configs (a `data` group), fine-tuning configs (a `task` group) and
sweeps (`pretrain` + `downstream`) are checked; a sweep's keys carry its prefix.
"""
from __future__ import annotations

import json

import jax
from etils import epath

from bertjax import config_lib, optim, sharding
from bertjax.data import instances, masking, text_files
from bertjax.errors import UserError
from bertjax.models import attention

DTYPES = ('float32', 'bfloat16', 'float16')
# instances.sentence_pairs draws a target of 2 or more text tokens beside [CLS] and
# the [SEP]s (one [SEP] without a sentence objective).
MIN_TEXT_TOKENS = 2
# A packed row needs room for [CLS] + a segment of MIN_PACKED_SEGMENT + [SEP].
MIN_PACKED_SEQ_LEN = instances.MIN_PACKED_SEGMENT + 2
# [CLS] word [SEP]: the shortest fine-tuning row.
MIN_TASK_SEQ_LEN = 3


def validate(config) -> None:
  """Raises UserError for the first value that cannot work; returns None otherwise."""
  if 'variants' in config:  # a sweep: compare.validate checks its own keys
    validate_pretrain(config.pretrain, 'pretrain.')
    validate_finetune(config.downstream, 'downstream.', needs_init=False)
  elif 'task' in config:
    validate_finetune(config, '')
  elif 'data' in config:
    validate_pretrain(config, '')


def validate_pretrain(c, prefix: str) -> None:
  _model(c, prefix)
  d, t = c.data, c.train
  _at_least(prefix + 'train.steps', t.steps, 1)
  _at_least(prefix + 'train.eval_batches', t.eval_batches, 1)
  _common(c, prefix)
  _distill(c.distill, prefix, c.init)
  _choice(prefix + 'data.sentence_objective', d.sentence_objective, instances.OBJECTIVES)
  if d.packing:
    low, why = MIN_PACKED_SEQ_LEN, 'packed rows'
  elif d.sentence_objective == 'none':
    low, why = MIN_TEXT_TOKENS + 2, '[CLS] text [SEP] instances'
  else:
    low, why = MIN_TEXT_TOKENS + 3, '[CLS] A [SEP] B [SEP] instances'
  _seq_len(prefix + 'data.seq_len', d.seq_len, low, why, c, prefix)
  _choice(prefix + 'data.doc_mode', d.doc_mode, text_files.DOC_MODES)
  _within(prefix + 'data.short_seq_prob', d.short_seq_prob, 0.0, 1.0)
  _within(prefix + 'data.eval_fraction', d.eval_fraction, 0.0, 1.0, high_open=True)
  _at_least(prefix + 'data.workers', d.workers, 0)
  m = d.masking
  _choice(prefix + 'data.masking.kind', m.kind, masking.KINDS)
  _within(prefix + 'data.masking.rate', m.rate, 0.0, 1.0, low_open=True)
  _at_least(prefix + 'data.masking.max_predictions', m.max_predictions, 1,
            'MLM pre-training needs masked tokens to predict')
  if m.max_predictions > d.seq_len:
    raise UserError(f'{prefix}data.masking.max_predictions={m.max_predictions} exceeds '
                    f'{prefix}data.seq_len={d.seq_len}; pass '
                    f'--config.{prefix}data.masking.max_predictions=N with N <= {d.seq_len}')
  _at_least(prefix + 'data.masking.dupe_factor', m.dupe_factor, 0)
  _masking(c, prefix)


def _masking(c, prefix: str) -> None:
  """The masking kind's needs, the replacement split, and room for the rate."""
  m, key = c.data.masking, prefix + 'data.masking.'
  needed = masking.predictions_needed(m.rate, c.data.seq_len)
  if m.max_predictions < needed:
    raise UserError(f'{key}max_predictions={m.max_predictions} cannot hold {key}rate={m.rate} '
                    f'of a {c.data.seq_len}-token row ({needed} predictions); pass '
                    f'--config.{key}max_predictions={masking.predictions_for(m.rate, c.data.seq_len)}'
                    ' or a lower rate')
  for name in ('mask_prob', 'random_prob'):
    _within(key + name, m[name], 0.0, 1.0)
  if m.mask_prob + m.random_prob > 1:
    raise UserError(f'{key}mask_prob={m.mask_prob} + {key}random_prob={m.random_prob} exceed 1 '
                    '(the rest of the chosen tokens stay unchanged); lower one of them')
  if m.kind == 'pmi' and not m.pmi_vocab:
    raise UserError(f"{key}kind='pmi' masks the n-grams of a PMI vocabulary, but {key}pmi_vocab "
                    f'is empty; build one with `bertjax data pmi --corpus ... --tokenizer DIR '
                    f'--out FILE` and pass --config.{key}pmi_vocab=FILE')
  if c.model.sbo and m.kind not in masking.SPAN_KINDS:
    raise UserError(f'{prefix}model.sbo=True predicts masked spans from their boundaries, but '
                    f'{key}kind={m.kind!r} makes no spans; pass --config.{key}kind=span or '
                    f'--config.{prefix}model.sbo=False')


def validate_finetune(c, prefix: str, needs_init: bool = True) -> None:
  if needs_init and not c.init:
    raise UserError(f'{prefix}init is empty: fine-tuning starts from trained weights; pass '
                    f'--config.{prefix}init=WORKDIR (a bertjax workdir or a Hugging Face '
                    'directory)')
  _model(c, prefix)
  t = c.train
  _at_least(prefix + 'train.steps', t.steps, 0)
  if t.steps == 0 and not t.epochs > 0:
    raise UserError(f'{prefix}train.epochs={t.epochs!r} with train.steps=0 trains nothing; '
                    f'pass --config.{prefix}train.epochs=3 (or train.steps=N)')
  _at_least(prefix + 'train.eval_batch_size', t.eval_batch_size, 1)
  _common(c, prefix)
  _distill(c.distill, prefix, c.init)
  _seq_len(prefix + 'task.seq_len', c.task.seq_len, MIN_TASK_SEQ_LEN, '[CLS] text [SEP]', c,
           prefix)
  dropout = c.task.get('classifier_dropout')
  if dropout is not None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
      raise UserError(f'{prefix}task.classifier_dropout={dropout!r} must be a rate or None; '
                      f'pass --config.{prefix}task.classifier_dropout=0.1')
    _within(prefix + 'task.classifier_dropout', dropout, 0.0, 1.0, high_open=True)


def _model(c, prefix: str) -> None:
  m = c.model
  key = prefix + 'model.'
  if m.preset != 'custom':
    _choice(key + 'preset', m.preset, tuple(config_lib.MODEL_PRESETS))
    named = config_lib.model_preset(m.preset)
    # Sizes an experiment file set itself (or a workdir written before presets were
    # checked) make the model custom: the name written to config.json and the logs
    # must not claim a preset the model is not. With init, the weights fix the sizes.
    if not c.init and any(m[k] != named[k] for k in config_lib.PRESET_KEYS):
      m.preset = 'custom'
  for name in config_lib.PRESET_KEYS:
    _at_least(key + name, m[name], 1)
  if m.hidden_size % m.num_heads:
    raise UserError(f'{key}hidden_size={m.hidden_size} does not split into {key}num_heads='
                    f'{m.num_heads} heads; pick a divisor of {m.hidden_size}')
  _choice(key + 'dtype', m.dtype, DTYPES)
  _choice(key + 'attention', m.attention, attention.IMPLEMENTATIONS)
  _within(key + 'dropout_rate', m.dropout_rate, 0.0, 1.0, high_open=True)
  _within(key + 'attention_dropout_rate', m.attention_dropout_rate, 0.0, 1.0, high_open=True)
  if m.attention != 'xla' and m.attention_dropout_rate:
    raise UserError(f'{key}attention={m.attention!r} has no attention-probability dropout, '
                    f'but {key}attention_dropout_rate={m.attention_dropout_rate}; pass '
                    f'--config.{key}attention_dropout_rate=0 or --config.{key}attention=xla')
  if m.attention == 'cudnn' and not _nvidia_gpu():
    raise UserError(f'{key}attention=\'cudnn\' needs an NVIDIA GPU, but JAX runs on '
                    f'{jax.devices()[0].device_kind}; pass --config.{key}attention=xla')


def _mesh(c, prefix: str) -> None:
  """Rule names and the slice count; sizes against devices are checked at mesh time."""
  if 'mesh' not in c:
    return
  _at_least(prefix + 'mesh.slices', c.mesh.get('slices', 1), 1)
  sharding.rules_from_config(c.mesh)


def _common(c, prefix: str) -> None:
  """What pre-training and fine-tuning configs share: train loop, optimizer, mesh."""
  t = c.train
  _at_least(prefix + 'train.batch_size', t.batch_size, 1)
  _at_least(prefix + 'train.eval_every', t.eval_every, 0)
  _at_least(prefix + 'train.log_every', t.log_every, 1)
  _at_least(prefix + 'train.checkpoint_every', t.checkpoint_every, 1)
  _at_least(prefix + 'train.keep_checkpoints', t.keep_checkpoints, 1,
            'a run that keeps no checkpoint cannot be resumed or exported')
  _at_least(prefix + 'train.grad_accum_steps', t.grad_accum_steps, 1)
  _optim(c.optim, prefix)
  _mesh(c, prefix)


def _optim(o, prefix: str) -> None:
  key = prefix + 'optim.'
  _choice(key + 'name', o.name, optim.OPTIMIZERS)
  _choice(key + 'decay', o.decay, optim.DECAYS)
  _positive(key + 'learning_rate', o.learning_rate)
  _at_least(key + 'warmup_steps', o.warmup_steps, 0)
  _within(key + 'warmup_ratio', o.warmup_ratio, 0.0, 1.0)
  _within(key + 'b1', o.b1, 0.0, 1.0, high_open=True)
  _within(key + 'b2', o.b2, 0.0, 1.0, high_open=True)
  _positive(key + 'eps', o.eps)
  _at_least(key + 'weight_decay', o.weight_decay, 0)
  _positive(key + 'clip_norm', o.clip_norm)
  _within(key + 'layer_decay', o.layer_decay, 0.0, 1.0, low_open=True)
  if 'freeze' in o:
    _at_least(key + 'freeze_layers', o.freeze_layers, 0)
    if not all(isinstance(p, str) and p.strip('.') for p in o.freeze):
      raise UserError(f'{key}freeze={o.freeze!r} must be dotted parameter names; pass e.g. '
                      f'--config.{key}freeze=embeddings,layers.0')


def _distill(d, prefix: str, init: str) -> None:
  """Pre-training's group (alpha_ce, alpha_mlm, alpha_cos, init_from_teacher) or
  fine-tuning's (alpha_ce, alpha_task)."""
  key = prefix + 'distill.'
  alphas = sorted(name for name in d.keys() if name.startswith('alpha_'))
  for name in alphas:
    _at_least(key + name, d[name], 0)
  _positive(key + 'temperature', d.temperature)
  if d.teacher and not sum(d[name] for name in alphas) > 0:
    raise UserError(f'{key}{", ".join(alphas)} are all 0: nothing to train on; pass e.g. '
                    f'--config.{key}alpha_ce=1.0')
  if not d.get('init_from_teacher'):
    return
  if not d.teacher:
    raise UserError(f'{key}init_from_teacher is set but {key}teacher is empty; pass '
                    f'--config.{key}teacher=WORKDIR_OR_HF_DIR')
  if init:
    raise UserError(f'{key}init_from_teacher and {prefix}init={init!r} both give the first '
                    f'weights; drop one of them')


def _seq_len(key: str, value, low: int, why: str, c, prefix: str) -> None:
  _at_least(key, value, low, f'{why} need {low} positions')
  high, source = _max_positions(c, prefix)
  if value > high:
    raise UserError(f'{key}={value} exceeds {source} ({high}); pass --config.{key}=N with '
                    f'{low} <= N <= {high}')
  if c.model.attention == 'splash' and value % 128:
    raise UserError(f'{key}={value}: {prefix}model.attention=\'splash\' needs a multiple of '
                    f'128; pass --config.{key}={max(128, value // 128 * 128)} or '
                    f'--config.{prefix}model.attention=xla')


def _max_positions(c, prefix: str) -> tuple[int, str]:
  """The position table's size: init's (its weights fix it), else the config's."""
  if c.init:
    path = epath.Path(c.init) / 'config.json'
    try:
      saved = json.loads(path.read_text())
    except (OSError, ValueError):
      saved = None  # the run's own loading reports an unreadable init
    if isinstance(saved, dict):
      found = saved.get('model', saved).get('max_position_embeddings')
      if isinstance(found, int):
        return found, f'the max_position_embeddings of init={c.init!r}'
  return c.model.max_position_embeddings, f'{prefix}model.max_position_embeddings'


def _nvidia_gpu() -> bool:
  if jax.default_backend() != 'gpu':
    return False
  try:
    jax.devices('cuda')
  except RuntimeError:  # a ROCm GPU
    return False
  return True


def _at_least(key: str, value, low, why: str = '') -> None:
  if not value >= low:
    raise UserError(f'{key}={value!r} must be at least {low}'
                    f'{f" ({why})" if why else ""}; pass --config.{key}=N with N >= {low}')


def _positive(key: str, value) -> None:
  if not value > 0:
    raise UserError(f'{key}={value!r} must be positive; pass --config.{key}=X with X > 0')


def _within(key: str, value, low, high, *, low_open=False, high_open=False) -> None:
  above = value > low if low_open else value >= low
  below = value < high if high_open else value <= high
  if not (above and below):
    interval = f'{"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    raise UserError(f'{key}={value!r} must lie in {interval}; pass --config.{key}=X '
                    f'with X in {interval}')


def _choice(key: str, value, choices: tuple) -> None:
  if value not in choices:
    raise UserError(f'{key}={value!r} is not one of {", ".join(choices)}; pass '
                    f'--config.{key}={choices[0]} (or another of these)')
