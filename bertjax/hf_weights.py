"""Weight names and layouts between bertjax and Hugging Face `transformers` BERT.

A `transformers` Linear stores weight (out, in); bertjax's Dense stores kernel
(*in, *out) (e.g. query (D, H, K)), so a kernel maps as reshape(in, out).T. The
encoder's names are here; each head kind's (and its class) are in models/heads.KINDS.

bertjax's word embeddings and MLM bias have `BertConfig.padded_vocab_size` rows;
`transformers` has `vocab_size`. Exports strip the padding rows (`to_hf` with
`vocab_size`), imports keep the target's own padding rows, and `pad_vocab_rows`
brings trees saved before the padding (checkpoints, optimizer moments) to shape.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.models import heads

# Our paths whose first axis is the (padded) vocabulary.
_WORD_EMBEDDINGS = ('bert', 'embeddings', 'word_embeddings', 'embedding')
# And the heads' such weights (the MLM bias).
_VOCAB_HEAD_PATHS = tuple(ours for head in heads.KINDS.values()
                          for how, _, ours in head.hf_weights if how == 'vocab')


def _dense(hf: str, ours: tuple, n_in: int = 1):
  return [(f'{hf}.weight', ours + ('kernel',), ('dense', n_in)),
          (f'{hf}.bias', ours + ('bias',), ('flat',))]


def _layer_norm(hf: str, ours: tuple):
  return [(f'{hf}.weight', ours + ('scale',), ('flat',)),
          (f'{hf}.bias', ours + ('bias',), ('flat',))]


def _encoder_names(num_layers: int, prefix: str, with_pooler: bool):
  names = [
      (f'{prefix}embeddings.word_embeddings.weight', _WORD_EMBEDDINGS, ('vocab',)),
      (f'{prefix}embeddings.position_embeddings.weight',
       ('bert', 'embeddings', 'position_embeddings', 'embedding'), ('flat',)),
      (f'{prefix}embeddings.token_type_embeddings.weight',
       ('bert', 'embeddings', 'token_type_embeddings', 'embedding'), ('flat',)),
      *_layer_norm(f'{prefix}embeddings.LayerNorm', ('bert', 'embeddings', 'layer_norm')),
  ]
  for i in range(num_layers):
    hf, ours = f'{prefix}encoder.layer.{i}.', ('bert', 'layers', i)
    names += [
        *_dense(hf + 'attention.self.query', ours + ('attention', 'query')),
        *_dense(hf + 'attention.self.key', ours + ('attention', 'key')),
        *_dense(hf + 'attention.self.value', ours + ('attention', 'value')),
        *_dense(hf + 'attention.output.dense', ours + ('attention', 'output'), n_in=2),
        *_layer_norm(hf + 'attention.output.LayerNorm', ours + ('attention_layer_norm',)),
        *_dense(hf + 'intermediate.dense', ours + ('intermediate',)),
        *_dense(hf + 'output.dense', ours + ('output',)),
        *_layer_norm(hf + 'output.LayerNorm', ours + ('output_layer_norm',)),
    ]
  if with_pooler:
    names += _dense(f'{prefix}pooler.dense', ('bert', 'pooler'))
  return names


_NAMES = {'dense': _dense, 'layer_norm': _layer_norm,
          'vocab': lambda hf, ours: [(hf, ours, ('vocab',))]}


def name_map(kind: str, num_layers: int):
  """[(hf_name, our_path, layout)] for a model of head `kind`."""
  head = heads.kind_of(kind)
  if kind == 'encoder':  # a bare BertModel checkpoint has no 'bert.' prefix
    return _encoder_names(num_layers, '', with_pooler=head.pooler)
  names = _encoder_names(num_layers, 'bert.', with_pooler=head.pooler)
  for how, hf, ours in head.hf_weights:
    names += _NAMES[how](hf, ours)
  return names


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def to_hf(params, kind: str, num_layers: int,
          vocab_size: int | None = None) -> dict[str, np.ndarray]:
  """bertjax params (pure dict) -> {transformers name: float32 array}; `vocab_size`
  (the real one, `BertConfig.vocab_size`) strips the padding rows of the vocabulary."""
  out = {}
  for hf_name, path, layout in name_map(kind, num_layers):
    value = np.asarray(_get(params, path), np.float32)
    if layout[0] == 'vocab':
      value = value[:vocab_size]
    elif layout[0] == 'dense':
      n_in = layout[1]
      value = value.reshape(math.prod(value.shape[:n_in]), -1).T
    else:
      value = value.reshape(-1) if path[-1] == 'bias' else value
    out[hf_name] = np.ascontiguousarray(value)
  return out


def _load(tensors, names, initial_params):
  """Params like `initial_params` with the named tensors put in (transposed/reshaped);
  returns (params, our paths of `names` absent from `tensors`)."""
  params, missing = initial_params, []
  for hf_name, path, layout in names:
    if hf_name not in tensors:
      missing.append(path)
      continue
    value = np.asarray(tensors[hf_name], np.float32)
    initial = _get(initial_params, path)
    if layout[0] == 'vocab':  # the real rows; the target's padding rows stay as they are
      value = np.concatenate([value, np.asarray(initial[value.shape[0]:], np.float32)])
    value = (value.T if layout[0] == 'dense' else value).reshape(initial.shape)
    params = _replace(params, path, value)
  return params, missing


def _replace(tree, path, value):
  if not path:
    return value
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def from_hf(tensors, initial_params, kind: str, num_layers: int):
  """{transformers name: array} -> params shaped like `initial_params`.

  Returns (params, missing): `missing` lists our paths absent from `tensors`; those
  keep their values from `initial_params`.
  """
  return _load(tensors, name_map(kind, num_layers), initial_params)


def into_pretraining(tensors, initial_params, kind: str, num_layers: int):
  """Weights of a checkpoint of any head kind -> a BertForPreTraining's params: the
  encoder, and the MLM/NSP heads where the checkpoint has them. Returns
  (params, missing paths), the missing ones initialised from `initial_params`."""
  if kind == 'encoder':  # a bare BertModel: names without the 'bert.' prefix
    params, _ = _load(tensors, name_map('encoder', num_layers), initial_params)
    missing = [p for _, p, _ in name_map('pretraining', num_layers) if p[0] != 'bert']
    return params, missing
  return _load(tensors, name_map('pretraining', num_layers), initial_params)


def is_vocab_path(names) -> bool:
  """Whether a params path (a tuple of names) is a word-embedding table or MLM bias,
  under 'bert' or at the root (a bare encoder's params)."""
  names = tuple(names)
  return names[-3:] == _WORD_EMBEDDINGS[1:] or any(
      names[-len(p):] == p for p in _VOCAB_HEAD_PATHS)


def path_names(path) -> tuple:
  """The names of a jax.tree_util key path (dict keys, attribute names, indices)."""
  return tuple(getattr(e, 'key', getattr(e, 'name', getattr(e, 'idx', None))) for e in path)


def pad_vocab_rows(tree, cfg):
  """`tree` (params, or a train state whose optimizer moments mirror them) with every
  word-embedding table and MLM bias of `cfg.vocab_size` rows zero-padded to
  `cfg.padded_vocab_size`: what a checkpoint saved before the padding needs. Leaves
  already padded are returned as they are.
  """
  def pad(path, leaf):
    if not is_vocab_path(path_names(path)) or leaf.shape[0] != cfg.vocab_size or (
        cfg.vocab_size == cfg.padded_vocab_size):
      return leaf
    widths = [(0, cfg.padded_vocab_size - cfg.vocab_size)] + [(0, 0)] * (leaf.ndim - 1)
    return np.pad(leaf, widths) if isinstance(leaf, np.ndarray) else jnp.pad(leaf, widths)
  return jax.tree_util.tree_map_with_path(pad, tree)
