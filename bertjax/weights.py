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

A run's `init` takes the sharded path instead, which never gathers weights on one
host: `restore_sharded` reads a workdir's params straight onto the run's shardings
(orbax partial restore), `place_hf` reads each process's slices of a safetensors
file; both run the same hole checks on shapes before reading anything.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
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
  kind: str                 # a heads.KINDS key; 'encoder' for a bare BertModel
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
  kind, labels, names, subdir = _workdir_kind(path, step)
  step, params = checkpoint.restore_params(path, abstract_params(kind, cfg, labels), step,
                                           subdir=subdir)
  params = jax.tree.map(np.asarray, params)
  tensors = hf_weights.to_hf(params, kind, cfg.num_layers, vocab_size=cfg.vocab_size)
  return Weights(path, kind, cfg, tensors, labels,
                 names, step)


def _workdir_kind(path: str, step: int | None = None):
  """(head kind, labels, label names, checkpoint subdir) of a workdir's weights: a
  fine-tuned one gives its best weights unless a `step` is asked for."""
  kind, labels, names, subdir = 'pretraining', 2, (), workdir_lib.CHECKPOINTS
  if workdir_lib.is_finetuned(path):
    info = workdir_lib.TaskInfo.read(path)
    kind, labels, names = info.model_kind, info.num_labels, info.label_names
    if step is None and workdir_lib.has_checkpoints(path, workdir_lib.BEST):
      subdir = workdir_lib.BEST
  return kind, labels, names, subdir


def _show(names, limit: int = 4) -> str:
  names = sorted(names)
  more = f' and {len(names) - limit} more' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


# Head parts a checkpoint either has whole or never had: absent whole, they are
# initialised fresh; present in part, they are a hole.
_HEAD_GROUPS = ('bert.pooler.', *dict.fromkeys(
    p for head in heads.KINDS.values() for p in head.hf_prefixes))


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
  used, initialised = _fit(weights, {n: tuple(v.shape) for n, v in weights.tensors.items()},
                           rooted, kind, num_labels)
  used = {n: weights.tensors[n] for n in used}
  if bare:
    used = {n[len('bert.'):]: v for n, v in used.items()}
  params, _ = hf_weights.from_hf(used, rooted, kind, layers)
  return (params['bert'] if bare else params), initialised


def _hf_shapes(rooted, kind: str, layers: int, vocab_size: int) -> dict[str, tuple]:
  """The shapes `hf_weights.to_hf` would give `rooted`'s leaves, from shapes alone."""
  out = {}
  for hf_name, path, layout in hf_weights.name_map(kind, layers):
    shape = tuple(_get(rooted, path).shape)
    if layout[0] == 'vocab':
      shape = (min(vocab_size, shape[0]), *shape[1:])
    elif layout[0] == 'dense':
      shape = (math.prod(shape[layout[1]:]), math.prod(shape[:layout[1]]))
    elif path[-1] == 'bias':
      shape = (math.prod(shape),)
    out[hf_name] = shape
  return out


def _fit(weights: Weights, shapes: dict[str, tuple], rooted, kind: str, num_labels: int):
  """The refusals of `transplant`, on shapes: the source's weights `shapes` (its
  `transformers` names) against the target `rooted`. Returns (names to copy, names
  the target initialises fresh)."""
  layers = weights.model_cfg.num_layers
  expected = _hf_shapes(rooted, kind, layers, weights.model_cfg.vocab_size)
  if kind == 'encoder':
    expected = {f'bert.{k}': v for k, v in expected.items()}
  if weights.kind == kind and heads.kind_of(kind).labelled and (
      weights.num_labels != num_labels):
    raise UserError(f'{weights.source} has a {weights.num_labels}-label {kind} head but the '
                    f'task has {num_labels} labels; fine-tune from the pre-trained encoder it '
                    'came from instead, or give task.labels the checkpoint\'s labels')
  present_groups = {_group(n) for n in shapes} - {None}
  missing = [n for n in expected if n not in shapes and _group(n) in present_groups | {None}]
  mis_shaped = [f'{n} is {shapes[n]}, expected {expected[n]}'
                for n in expected if n in shapes and shapes[n] != expected[n]]
  unexpected = [n for n in shapes if n not in expected and _group(n) is None]
  problems = []
  if missing:
    problems.append(f'lacks {len(missing)} weight(s) the model needs ({_show(missing)})')
  if mis_shaped:
    problems.append(f'has {len(mis_shaped)} mis-shaped weight(s) ({_show(mis_shaped, 2)})')
  if unexpected:
    problems.append(f'has {len(unexpected)} weight(s) a {layers}-layer BERT does not '
                    f'({_show(unexpected)})')
  if problems:
    raise UserError(f'{weights.source} {"; ".join(problems)}: its weights do not match its '
                    'config; re-export it, or fix config.json (layers, sizes) to match')
  initialised = sorted(n for n in expected if n not in shapes)
  dropped = sorted(n for n in shapes if n not in expected)
  if initialised:
    reporting.log(f'initialised fresh, as {weights.source} never had them: '
                  f'{_groups(initialised)}')
  if dropped:
    reporting.log(f'not used, as this model has no such head: {_groups(dropped)} of '
                  f'{weights.source}')
  return sorted(n for n in shapes if n in expected), initialised


def restore_sharded(path: str, fresh, kind: str, num_labels: int = 2):
  """`fresh` (the run's freshly initialised params: jax.Arrays on its mesh) with the
  weights of the bertjax workdir at `path` restored straight onto their shardings.

  Every process reads only its own shards from the checkpoint; nothing passes
  through one host or one device, so this works across the processes of a pod. The
  refusals are `transplant`'s, checked on the checkpoint's shapes before any read.
  Returns (params, initialised).
  """
  config = config_lib.load_workdir_config(path)
  cfg = config_lib.model_config(config, open_tokenizer(path).vocab_size)
  source_kind, labels, names, subdir = _workdir_kind(path)
  source_tree = abstract_params(source_kind, cfg, labels)
  source = Weights(path, source_kind, cfg, {}, labels, names)
  layers = cfg.num_layers
  bare = kind == 'encoder'
  rooted = {'bert': fresh} if bare else fresh
  used, initialised = _fit(source, _hf_shapes(source_tree, source_kind, layers, cfg.vocab_size),
                           rooted, kind, num_labels)
  source_paths = {n: p for n, p, _ in hf_weights.name_map(source_kind, layers)}
  target_paths = {('bert.' if bare else '') + n: p for n, p, _ in hf_weights.name_map(kind, layers)}
  wanted, moves = {}, []
  for name in used:
    # Both sides are bertjax models of one architecture: a leaf moves as it is.
    target = _get(rooted, target_paths[name])
    if tuple(_get(source_tree, source_paths[name]).shape) != tuple(target.shape):
      raise UserError(f'{path} holds {name} in another shape than this model; start from '
                      'a workdir of the same architecture')
    wanted = _put(wanted, source_paths[name],
                  jax.ShapeDtypeStruct(target.shape, target.dtype, sharding=target.sharding))
    moves.append((source_paths[name], target_paths[name]))
  _, restored = checkpoint.restore_params(path, wanted, subdir=subdir)
  for source_path, target_path in moves:
    rooted = _put(rooted, target_path, _get(restored, source_path))
  return (rooted['bert'] if bare else rooted), initialised


def _put(tree, path, value):
  """`tree` (nested dicts, made where absent) with `value` at `path`."""
  if not path:
    return value
  return {**tree, path[0]: _put(tree.get(path[0], {}), path[1:], value)}


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def place_hf(path: str, fresh, kind: str, num_labels: int = 2):
  """`fresh` (the run's freshly initialised params: jax.Arrays on its mesh) with the
  weights of the Hugging Face directory at `path` placed straight onto their
  shardings (`jax.make_array_from_callback`): each process reads from
  model.safetensors only what its own devices hold: the slices of embeddings, layer
  norms and biases, whole `transformers` Linear weights (their layout is transposed
  from ours) one at a time. A file on `gs://` is staged to each host's disk first
  (safetensors reads local files). The refusals are `transplant`'s, checked on the
  file's shapes before any read. Returns (params, initialised).
  """
  from safetensors import safe_open
  export_dir.check_complete(path)
  cfg, raw = hf.read_hf_config(path)
  local_file = storage.local_copy(hf.safetensors_path(path))
  layers = cfg.num_layers
  bare = kind == 'encoder'
  rooted = {'bert': fresh} if bare else fresh
  with safe_open(local_file, 'np') as file:
    shapes = {n: tuple(file.get_slice(n).get_shape()) for n in file.keys()
              if n not in hf._IGNORED}
    structs = {n: jax.ShapeDtypeStruct(s, np.float32) for n, s in shapes.items()}
    source_kind = hf.checkpoint_kind(structs, raw)
    labels = hf.num_labels(structs, source_kind)
    # Weights names a bare encoder's tensors under 'bert.' like the other kinds.
    stored = {(f'bert.{n}' if source_kind == 'encoder' else n): n for n in shapes}
    source = Weights(path, source_kind, cfg, {}, labels)
    used, initialised = _fit(source, {n: shapes[f] for n, f in stored.items()}, rooted, kind,
                             num_labels)
    layouts = {('bert.' if bare else '') + n: (p, layout)
               for n, p, layout in hf_weights.name_map(kind, layers)}
    for name in used:
      target_path, layout = layouts[name]
      target = _get(rooted, target_path)
      rooted = _put(rooted, target_path,
                    _place(file, stored[name], layout, target, cfg.vocab_size))
  return (rooted['bert'] if bare else rooted), initialised


def _place(file, name: str, layout, target, vocab_size: int):
  """One safetensors tensor in `target`'s shape, dtype and sharding."""
  if layout[0] == 'dense':  # (out, in) -> our (*in, *out): read whole, once
    whole = np.asarray(file.get_tensor(name)).T.reshape(target.shape)
    return jax.make_array_from_callback(target.shape, target.sharding,
                                        lambda index: whole[index].astype(target.dtype))
  tensor = file.get_slice(name)
  if layout[0] != 'vocab':  # the same layout (a bias flattened: reshape the slice)
    flat_bias = len(target.shape) > 1 and len(tensor.get_shape()) == 1
    def read(index):
      if flat_bias:
        return np.asarray(tensor[:]).reshape(target.shape)[index].astype(target.dtype)
      return np.asarray(tensor[index]).astype(target.dtype)
    return jax.make_array_from_callback(target.shape, target.sharding, read)

  # The vocabulary: the file's rows, then the target's own padding rows.
  def rows(index):
    wanted = index[0]
    start, stop, _ = wanted.indices(target.shape[0])
    got = np.asarray(tensor[start:min(stop, vocab_size)]) if start < vocab_size else None
    out = np.zeros((stop - start, *target.shape[1:]), np.float32)
    if got is not None:
      out[:len(got)] = got
    return out[(slice(None), *index[1:])].astype(target.dtype)
  loaded = jax.make_array_from_callback(target.shape, target.sharding, rows)
  keep_padding = jax.jit(
      lambda real, fresh: jnp.where(
          jax.lax.broadcasted_iota(jnp.int32, fresh.shape, 0) < vocab_size, real, fresh),
      out_shardings=target.sharding)
  return keep_padding(loaded, target)
