"""Opening trained weights, from a bertjax workdir or a Hugging Face directory.

Everything that reads weights somebody trained comes here: `bertjax import` and
`export`, fine-tuning's `init`, phase 2's `init`, `from_pretrained`, `evaluate` and the
masking sweep. Weights travel under `transformers` names (`Weights.tensors`), the one
naming every head kind shares, so any source can fill any target model:
`transplant` puts a source's encoder (and its head, where the target has the same
kind) into a target's freshly initialised params. It refuses holes: a missing,
unexpected or mis-shaped encoder weight ends the command with a message that lists
them. Only parts the source never had (another kind's head, a pooler that its class
does not carry) keep their fresh values, and the message names them.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx

from bertjax import checkpoint, config_lib, export_dir, hf, hf_weights, reporting
from bertjax import storage, workdir as workdir_lib
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig

@dataclasses.dataclass
class Weights:
  """A checkpoint's weights under `transformers` names (bare encoders prefixed
  'bert.' like the others), with what is needed to rebuild its model."""
  source: str
  kind: str                 # a heads.build kind; 'encoder' for a bare BertModel
  model_cfg: BertConfig
  tensors: dict[str, np.ndarray]
  num_labels: int = 2
  label_names: tuple[str, ...] = ()
  step: int | None = None


def abstract_params(kind: str, cfg: BertConfig, num_labels: int = 2):
  """The params tree of a model of head `kind`, shapes only."""
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: heads.build(kind, cfg, num_labels=num_labels, rngs=nnx.Rngs(0)))))


def initial_params(kind: str, cfg: BertConfig, num_labels: int = 2, seed: int = 0):
  """Freshly initialised params of a model of head `kind`, as host arrays."""
  module = heads.build(kind, cfg, num_labels=num_labels,
                       rngs=nnx.Rngs(params=jax.random.key(seed)))
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module)))


def source_model_config(path: str) -> BertConfig:
  """The architecture of the weights at `path` (a workdir or a Hugging Face directory)."""
  if workdir_lib.is_workdir(path):
    config = config_lib.load_workdir_config(path)
    return config_lib.model_config(config, open_tokenizer(path).vocab_size)
  return hf.read_hf_config(path)[0]


def open_tokenizer(path: str) -> tokenizer_lib.Tokenizer:
  if workdir_lib.is_workdir(path):
    return tokenizer_lib.load(os.fspath(workdir_lib.path(path) / workdir_lib.TOKENIZER))
  return hf.load_hf_tokenizer(path)


def open_weights(path: str, step: int | None = None) -> Weights:
  """The weights of a bertjax workdir or a Hugging Face directory. A fine-tuned
  workdir gives its best weights (or checkpoint `step`), in its task's head kind."""
  if workdir_lib.is_workdir(path):
    return _open_workdir(path, step)
  if not os.path.isdir(path) and not storage.is_url(path):
    raise UserError(f'{path} is not a directory; point at a bertjax workdir or a Hugging '
                    'Face model directory')
  if step is not None:
    raise UserError(f'{path} is a Hugging Face directory, which has no checkpoint steps; '
                    'drop --step')
  export_dir.check_complete(path)
  cfg, raw = hf.read_hf_config(path)
  tensors = hf.read_safetensors(path)
  kind = hf.checkpoint_kind(tensors, raw)
  labels = hf.num_labels(tensors, kind)
  id2label = raw.get('id2label') or {}
  names = tuple(id2label[str(i)] for i in range(labels)) if len(id2label) == labels else ()
  if kind == 'encoder':
    tensors = {f'bert.{k}': v for k, v in tensors.items()}
  return Weights(path, kind, cfg, tensors, labels, names)


def _open_workdir(path: str, step: int | None) -> Weights:
  config = config_lib.load_workdir_config(path)
  cfg = config_lib.model_config(config, open_tokenizer(path).vocab_size)
  kind, labels, names, subdir = 'pretraining', 2, (), workdir_lib.CHECKPOINTS
  if workdir_lib.is_finetuned(path):
    info = workdir_lib.TaskInfo.read(path)
    kind, labels, names = info.model_kind, info.num_labels, info.label_names
    if step is None and workdir_lib.has_checkpoints(path, workdir_lib.BEST):
      subdir = workdir_lib.BEST
  step, params = checkpoint.restore_params(path, abstract_params(kind, cfg, labels), step,
                                           subdir=subdir)
  params = jax.tree.map(np.asarray, params)
  tensors = hf_weights.to_hf(params, kind, cfg.num_layers, vocab_size=cfg.vocab_size)
  return Weights(path, kind, cfg, tensors, labels,
                 names, step)


def _show(names, limit: int = 4) -> str:
  names = sorted(names)
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


# Head parts a checkpoint either has whole or never had: absent whole, they are
# initialised fresh; present in part, they are a hole.
_HEAD_GROUPS = ('bert.pooler.', 'cls.predictions.', 'cls.seq_relationship.', 'classifier.',
                'qa_outputs.')


def _group(name: str) -> str | None:
  return next((g for g in _HEAD_GROUPS if name.startswith(g)), None)


def _groups(names) -> str:
  """'cls.predictions (5 weights), cls.seq_relationship (2 weights)'."""
  counts = {}
  for n in names:
    g = (_group(n) or n).rstrip('.')
    counts[g] = counts.get(g, 0) + 1
  return ', '.join(f'{g} ({c} weight{"s" * (c > 1)})' for g, c in sorted(counts.items()))


def transplant(weights: Weights, fresh, kind: str, num_labels: int = 2):
  """`fresh` (the target model's initial params, a pure dict) with `weights` put in.

  Returns (params, initialised): the names of target weights the source never had.
  """
  layers = weights.model_cfg.num_layers
  bare = kind == 'encoder'  # hf_weights names a bare encoder's weights under 'bert'
  rooted = {'bert': fresh} if bare else fresh
  # The target's padding rows (models pad the vocabulary) are not weights to fill.
  expected = hf_weights.to_hf(rooted, kind, layers, vocab_size=weights.model_cfg.vocab_size)
  if bare:
    expected = {f'bert.{k}': v for k, v in expected.items()}
  if weights.kind == kind and kind in ('sequence_classification', 'token_classification') and (
      weights.num_labels != num_labels):
    raise UserError(f'{weights.source} has a {weights.num_labels}-label {kind} head but the '
                    f'task has {num_labels} labels; fine-tune from the pre-trained encoder it '
                    'came from instead, or give task.labels the checkpoint\'s labels')
  tensors = weights.tensors
  present_groups = {_group(n) for n in tensors} - {None}
  missing = [n for n in expected if n not in tensors and _group(n) in present_groups | {None}]
  shapes = [f'{n} is {tuple(tensors[n].shape)}, expected {tuple(expected[n].shape)}'
            for n in expected if n in tensors and tensors[n].shape != expected[n].shape]
  unexpected = [n for n in tensors if n not in expected and _group(n) is None]
  problems = []
  if missing:
    problems.append(f'lacks {len(missing)} weight(s) the model needs ({_show(missing)})')
  if shapes:
    problems.append(f'has {len(shapes)} mis-shaped weight(s) ({_show(shapes, 2)})')
  if unexpected:
    problems.append(f'has {len(unexpected)} weight(s) a {layers}-layer BERT does not '
                    f'({_show(unexpected)})')
  if problems:
    raise UserError(f'{weights.source} {"; ".join(problems)}: its weights do not match its '
                    'config; re-export it, or fix config.json (layers, sizes) to match')
  initialised = sorted(n for n in expected if n not in tensors)
  dropped = sorted(n for n in tensors if n not in expected)
  used = {n: v for n, v in tensors.items() if n in expected}
  if bare:
    used = {n[len('bert.'):]: v for n, v in used.items()}
  params, _ = hf_weights.from_hf(used, rooted, kind, layers)
  if initialised:
    reporting.log(f'initialised fresh, as {weights.source} never had them: '
                  f'{_groups(initialised)}')
  if dropped:
    reporting.log(f'not used, as this model has no such head: {_groups(dropped)} of '
                  f'{weights.source}')
  return (params['bert'] if bare else params), initialised
