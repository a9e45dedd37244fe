"""The optax chain: clip by global norm, AdamW or LAMB with masked weight decay, a
learning-rate schedule, and optional layer-wise learning-rate decay.

BERT's recipe: linear warm-up to the peak rate, then linear decay to 0 at the last
step; weight decay on every weight but biases and LayerNorm parameters.

Frozen parameters (`optim.freeze`, `freeze_embeddings`, `freeze_layers`) go through
`optax.set_to_zero` in an `optax.multi_transform`: their updates are exactly zero
(weight decay included), and the AdamW/LAMB state holds only `MaskedNode`s for them.
"""
from __future__ import annotations

import fnmatch

import jax
import jax.numpy as jnp
import optax

from bertjax.errors import UserError

DECAYS = ('linear', 'cosine', 'constant')
OPTIMIZERS = ('adamw', 'lamb')


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  peak, warmup = optim_cfg.learning_rate, optim_cfg.warmup_steps
  # Fine-tuning recipes give warm-up as a fraction of the run; it wins when set.
  if optim_cfg.get('warmup_ratio', 0.0):
    if not 0.0 < optim_cfg.warmup_ratio <= 1.0:
      raise UserError(f'optim.warmup_ratio {optim_cfg.warmup_ratio} must be in (0, 1]')
    warmup = round(optim_cfg.warmup_ratio * total_steps)
  if optim_cfg.decay not in DECAYS:
    raise UserError(f'optim.decay {optim_cfg.decay!r} is unknown; choose one of {DECAYS}')
  warmup = min(warmup, total_steps)
  decay_steps = max(1, total_steps - warmup)
  if optim_cfg.decay == 'linear':
    after = optax.linear_schedule(peak, 0.0, decay_steps)
  elif optim_cfg.decay == 'cosine':
    after = optax.cosine_decay_schedule(peak, decay_steps)
  else:
    after = optax.constant_schedule(peak)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), after], boundaries=[warmup])


def _name(key) -> str:
  return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))


def weight_decay_mask(params):
  """True for weights that decay: not biases, not LayerNorm scales and offsets."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _name(path[-1]) not in ('bias', 'scale'), params)


def layer_depths(params, num_layers: int):
  """Depth of each weight for layer-wise decay: embeddings 0, layer i is i + 1, and
  everything above the encoder (pooler, heads) num_layers + 1."""
  def depth(path, _):
    names = [_name(k) for k in path]
    if 'embeddings' in names:
      return 0
    if 'layers' in names:
      return int(names[names.index('layers') + 1]) + 1
    return num_layers + 1
  return jax.tree_util.tree_map_with_path(depth, params)


def scale_by_layer_decay(decay: float, num_layers: int) -> optax.GradientTransformation:
  """Multiplies each update by decay ** (num_layers + 1 - depth) (ELECTRA, BEiT)."""
  def update(updates, state, params=None):
    depths = layer_depths(updates, num_layers)
    return jax.tree.map(lambda u, d: u * jnp.asarray(decay ** (num_layers + 1 - d), u.dtype),
                        updates, depths), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


# The config keys that choose frozen parameters; a resumed run must keep them.
FREEZE_KEYS = ('optim.freeze', 'optim.freeze_embeddings', 'optim.freeze_layers')


def freeze_patterns(optim_cfg, num_layers: int) -> tuple[str, ...]:
  """`optim.freeze` plus what `freeze_embeddings` and `freeze_layers=k` stand for
  ('embeddings', 'layers.0' ... 'layers.{k-1}')."""
  k = optim_cfg.get('freeze_layers', 0)
  if k > num_layers:
    raise UserError(f'optim.freeze_layers={k} exceeds the model\'s {num_layers} layers; '
                    f'pass --config.optim.freeze_layers=N with N <= {num_layers}')
  patterns = list(optim_cfg.get('freeze', ()))
  if optim_cfg.get('freeze_embeddings', False):
    patterns.append('embeddings')
  patterns += [f'layers.{i}' for i in range(k)]
  return tuple(dict.fromkeys(patterns))


def _matches(pattern: str, names: list[str]) -> bool:
  """`pattern`'s dotted parts (fnmatch globs) are consecutive parts of the path:
  'layers.1' matches bert.layers.1.*, not bert.layers.10.*."""
  parts = pattern.split('.')
  return any(all(fnmatch.fnmatchcase(n, p) for n, p in zip(names[i:i + len(parts)], parts))
             for i in range(len(names) - len(parts) + 1))


def frozen_labels(params, patterns: tuple[str, ...]):
  """'frozen' or 'trained' for each parameter; a pattern matching none is an error."""
  if not isinstance(params, dict):
    # optax.tree_map_params initialises with one placeholder for the whole tree: the
    # trained part's moments then stand where the params do, as sharding needs.
    return 'trained'
  paths = [[_name(k) for k in path]
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern in patterns:
    if not any(_matches(pattern, names) for names in paths):
      raise UserError(f'optim.freeze pattern {pattern!r} matches no parameter; use dotted '
                      'parameter names such as embeddings, layers.0, pooler or classifier')
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'frozen' if any(_matches(p, [_name(k) for k in path])
                                      for p in patterns) else 'trained', params)


def param_labels(optim_cfg, num_layers: int):
  """params -> 'frozen' or 'trained' for each: the mask the optimizer splits on."""
  patterns = freeze_patterns(optim_cfg, num_layers)
  return lambda params: frozen_labels(params, patterns)


def make_optimizer(optim_cfg, total_steps: int, num_layers: int) -> optax.GradientTransformation:
  trained = _trained_chain(optim_cfg, total_steps, num_layers)
  if not freeze_patterns(optim_cfg, num_layers):
    return trained
  return optax.multi_transform(dict(trained=trained, frozen=optax.set_to_zero()),
                               param_labels(optim_cfg, num_layers))


def applied_grad_norm(grads, labels):
  """The global norm of the gradients `labels` (their `param_labels`) marks 'trained',
  the norm `clip_by_global_norm` clips by: frozen ones are computed but never applied."""
  label_leaves = jax.tree.leaves(labels)
  return optax.tree.norm([g for g, label in zip(jax.tree.leaves(grads), label_leaves)
                          if label == 'trained'])


def _trained_chain(optim_cfg, total_steps: int, num_layers: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  kwargs = dict(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                weight_decay=optim_cfg.weight_decay, mask=weight_decay_mask)
  if optim_cfg.name == 'adamw':
    base = optax.adamw(schedule, **kwargs)
  elif optim_cfg.name == 'lamb':
    base = optax.lamb(schedule, **kwargs)
  else:
    raise UserError(f'optim.name {optim_cfg.name!r} is unknown; choose one of {OPTIMIZERS}')
  chain = [optax.clip_by_global_norm(optim_cfg.clip_norm), base]
  if optim_cfg.layer_decay != 1.0:
    chain.append(scale_by_layer_decay(optim_cfg.layer_decay, num_layers))
  return optax.chain(*chain)
