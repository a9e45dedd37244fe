"""The optax chain: clip by global norm, AdamW with masked weight decay, a schedule.

BERT's recipe: linear warm-up to the peak rate, then linear decay to 0 at the last
step; weight decay on every weight but biases and LayerNorm parameters.
"""
from __future__ import annotations

import jax
import optax

from bertjax.errors import UserError

DECAYS = ('linear', 'cosine', 'constant')


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  peak, warmup = optim_cfg.learning_rate, optim_cfg.warmup_steps
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


def weight_decay_mask(params):
  """True for weights that decay: not biases, not LayerNorm scales and offsets."""
  def decays(path, _):
    name = getattr(path[-1], 'key', getattr(path[-1], 'name', None))
    return name not in ('bias', 'scale')
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, total_steps)
  return optax.chain(
      optax.clip_by_global_norm(optim_cfg.clip_norm),
      optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay, mask=weight_decay_mask))
