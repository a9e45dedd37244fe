"""The jitted pieces of training: state init, train step, eval step, shardings.

`build(model_cfg, optim_cfg, mesh, rules, objective, *, total_steps, batch_size,
grad_accum_steps, seed)` returns them as one `Steps`: it takes the few settings it uses,
not a whole config (`config_lib.step_settings(config)` reads them from one). train.py (pre-training) and finetune.py run the loops, tests and
benchmarks call the same functions. An `Objective` says what is trained: the model,
its loss as sums and the eval function (pre-training's by default). Gradient
accumulation reduces across devices once a step, after its micro-batches (see
`accumulate`), a distillation teacher's params passed along. Params are sharded by
their logical axis names, optimizer moments like their params, scalars replicated;
the train step donates the old state (in-place update on device).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.core import spmd as core_spmd

from bertjax import optim, sharding
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.tasks import pretrain


@dataclasses.dataclass(frozen=True)
class Objective:
  """A model and its loss, written as sums so micro-batches add up exactly."""
  build_model: Callable[[Any], nnx.Module]          # key -> model
  batch_sums: Callable[..., dict]                    # (model, batch, rngs) -> sums
  batch_counts: Callable[[Any], dict]                # batch -> the loss's denominators
  loss_from_sums: Callable[[dict, dict], Any]        # (sums, whole-batch counts) -> loss
  metrics_from_sums: Callable[[dict], dict]          # sums -> logged train metrics
  evaluate: Callable[[nnx.Module, Any], Any]         # (model, batch) -> eval outputs
  # Device arrays the train step takes as a third argument, never differentiated nor
  # saved (a distillation teacher's params); batch_sums then gets them last.
  extra_inputs: Any = None


def pretraining(model_cfg) -> Objective:
  return Objective(
      build_model=lambda key: pretrain.build_model(model_cfg, key),
      batch_sums=pretrain.batch_sums,
      batch_counts=lambda b: dict(mlm_count=b['mlm_weights'].sum(),
                                  nsp_count=(b['nsp_labels'] >= 0).sum()),
      loss_from_sums=lambda sums, c: pretrain.loss_from_sums(sums, c['mlm_count'],
                                                             c['nsp_count']),
      metrics_from_sums=pretrain.metrics_from_sums,
      evaluate=pretrain.batch_sums)


def finetuning(task, model_cfg, num_labels: int,
               classifier_dropout: float | None = None) -> Objective:
  """A fine-tuning task's objective (a tasks/ module: classify, tag or qa)."""
  return Objective(
      build_model=lambda key: heads.build(task.MODEL_KIND, model_cfg, num_labels=num_labels,
                                          rngs=nnx.Rngs(params=key),
                                          classifier_dropout=classifier_dropout),
      batch_sums=task.batch_sums,
      batch_counts=lambda batch: dict(count=task.batch_count(batch)),
      loss_from_sums=lambda sums, c: sums['loss_sum'] / jnp.maximum(c['count'], 1.0),
      metrics_from_sums=task.train_metrics, evaluate=task.predict)


@dataclasses.dataclass
class Steps:
  init: Callable[[Any], Any]              # key -> state
  init_from_params: Callable[[Any], Any]  # params -> state with a fresh optimizer
  train_step: Callable[[Any, Any], Any]   # (state, batch) -> (state, metrics)
  eval_step: Callable[[Any, Any], Any]    # (params, batch) -> objective.evaluate
  abstract_state: Any                     # ShapeDtypeStructs carrying their shardings
  state_sharding: Any
  batch_sharding: jax.sharding.NamedSharding


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _moment_sharding(moment, param_sharding):
  """A moment is sharded like its param; frozen params have no moment (MaskedNode)."""
  return moment if _is_masked(moment) else param_sharding


def build(model_cfg, optim_cfg, mesh, rules, objective: Objective | None = None, *,
          total_steps: int, batch_size: int, grad_accum_steps: int, seed: int) -> Steps:
  """The steps of `objective` (pre-training by default) trained by `optim_cfg`'s
  optimizer over `total_steps` (its schedule's length), on global batches of
  `batch_size` rows split into `grad_accum_steps` micro-batches; `seed` draws the
  initial weights and the dropout masks."""
  objective = objective or pretraining(model_cfg)
  optimizer = optim.make_optimizer(optim_cfg, total_steps, model_cfg.num_layers)
  schedule = optim.learning_rate_schedule(optim_cfg, total_steps)
  param_labels = optim.param_labels(optim_cfg, model_cfg.num_layers)
  base_key = jax.random.key(seed)
  accum = grad_accum_steps
  batch_shards = sharding.num_batch_shards(mesh, rules)
  if batch_size % (batch_shards * accum):
    raise UserError(f'train.batch_size {batch_size} must split into '
                    f'{accum} micro-batch(es) over the {batch_shards} batch shards of mesh '
                    f'{dict(mesh.shape)}; use a multiple of {batch_shards * accum}')

  def init_from_params(params):
    return dict(step=jnp.zeros((), jnp.int32), params=params,
                opt_state=optimizer.init(params))

  def init(key):
    return init_from_params(nnx.to_pure_dict(nnx.state(objective.build_model(key))))

  with sharding.activate(mesh, rules):
    abstract_model = nnx.eval_shape(lambda: objective.build_model(base_key))
    params_sharding = nnx.to_pure_dict(
        sharding.param_shardings(nnx.state(abstract_model), mesh, rules))
    abstract_state = jax.eval_shape(init, base_key)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sharding = dict(
        step=replicated, params=params_sharding,
        opt_state=optax.tree_map_params(optimizer, _moment_sharding,
                                        abstract_state['opt_state'], params_sharding,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=_is_masked))
  graphdef = nnx.graphdef(abstract_model)
  batch_sharding = sharding.batch_sharding(mesh, rules)

  batch_axes = sharding.batch_axes(mesh, rules)
  params_spec = jax.tree.map(lambda sh: sharding.only_axes(sh.spec, batch_axes),
                             params_sharding)
  inner_rules = sharding.without_axes(rules, batch_axes)
  extra = objective.extra_inputs
  extra_sharding = None if extra is None else jax.tree.map(lambda x: x.sharding, extra)
  # The extra inputs (a teacher's params) enter the accumulation as their own specs:
  # sharded over the batch axes like the student's weights, gathered the same way.
  extra_spec = None if extra is None else jax.tree.map(
      lambda sh: sharding.only_axes(sh.spec, batch_axes), extra_sharding)

  def accumulate(params, batch, dropout_key, counts, extra=None):
    """Summed gradients and loss sums of `accum` micro-batches, reduced across devices
    once. Under shard_map over the batch axes each device runs the micro-batches of
    its own rows and keeps its partial gradient sum unreduced (full-size: the price
    of one reduction instead of `accum`); weights sharded over those axes (the
    student's, and the extra inputs' such as a teacher's) are gathered once, before
    the micro-batches, and held whole through them (FSDP's memory saving gives way
    to one gather a step), the gradient sums reduce-scattered back after the loop."""
    extras = () if extra is None else (extra,)

    @core_spmd.logical_axis_rules(inner_rules)  # the batch axes are manual in here
    def local(params, batch, dropout_key, counts, *extras):
      shard = jax.lax.axis_index(batch_axes) if batch_axes else 0
      full = jax.tree.map(lambda p, spec: _gather(p, spec), params, params_spec)
      full_extra = jax.tree.map(_gather, extras[0], extra_spec) if extras else None
      micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)

      def body(carry, xs):
        micro_batch, index = xs
        # Each device draws its own dropout masks: key (step, micro-batch, shard).
        key = jax.random.fold_in(jax.random.fold_in(dropout_key, index), shard)
        return jax.tree.map(jnp.add, carry, micro_grads(full, micro_batch, key, counts,
                                                        full_extra)), None

      zeros = jax.eval_shape(micro_grads, full, jax.tree.map(lambda x: x[0], micro),
                             dropout_key, counts, full_extra)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
      grads = jax.tree.map(lambda g, spec: _reduce(g, spec, batch_axes), grads, params_spec)
      return grads, jax.lax.psum(sums, batch_axes) if batch_axes else sums

    if not batch_axes:  # mesh.rules left the batch whole: nothing to reduce
      return local(params, batch, dropout_key, counts, *extras)
    P = jax.sharding.PartitionSpec
    extra_specs = () if extra is None else (extra_spec,)
    return jax.shard_map(
        local, mesh=mesh, axis_names=frozenset(batch_axes), check_vma=False,
        in_specs=(params_spec, P(batch_axes), P(), P(), *extra_specs),
        out_specs=(params_spec, P()))(params, batch, dropout_key, counts, *extras)

  def micro_grads(params, micro_batch, key, counts, extra=None):
    """Gradients of a micro-batch's share of the whole batch's loss, and its sums;
    `extra`: the objective's extra inputs (a distillation teacher's params)."""
    def loss_fn(p):
      model, rngs = nnx.merge(graphdef, p), nnx.Rngs(dropout=key)
      sums = (objective.batch_sums(model, micro_batch, rngs) if extra is None
              else objective.batch_sums(model, micro_batch, rngs, extra))
      return objective.loss_from_sums(sums, counts), sums
    return jax.grad(loss_fn, has_aux=True)(params)

  def train_step(state, batch, seed_key, extra=None):
    # Dropout derives from (seed, step): a resumed run draws the same masks. The seed's
    # key is an argument, not a constant, so runs that differ only by seed share one
    # program (and the compilation cache).
    dropout_key = jax.random.fold_in(seed_key, state['step'])
    counts = objective.batch_counts(batch)

    if accum == 1:
      grads, sums = micro_grads(state['params'], batch, jax.random.fold_in(dropout_key, 0),
                                counts, extra)
    else:
      grads, sums = accumulate(state['params'], batch, dropout_key, counts, extra)

    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = objective.metrics_from_sums(sums)
    metrics.update(tokens=sums['tokens'], learning_rate=schedule(state['step']),
                   grad_norm=optim.applied_grad_norm(grads, param_labels(grads)))
    return dict(step=state['step'] + 1, params=params, opt_state=opt_state), metrics

  def eval_step(params, batch):
    return objective.evaluate(nnx.merge(graphdef, params), batch)

  extra_shardings = () if extra is None else (extra_sharding,)
  with sharding.activate(mesh, rules):
    abstract_with_sharding = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding)
    return Steps(
        init=jax.jit(init, out_shardings=state_sharding),
        init_from_params=jax.jit(init_from_params, in_shardings=(params_sharding,),
                                 out_shardings=state_sharding),
        train_step=_BoundStep(jax.jit(
            train_step,
            in_shardings=(state_sharding, batch_sharding, replicated, *extra_shardings),
            out_shardings=(state_sharding, replicated), donate_argnums=0),
            base_key, *(() if extra is None else (extra,))),
        eval_step=jax.jit(eval_step, in_shardings=(params_sharding, batch_sharding),
                          out_shardings=replicated),
        abstract_state=abstract_with_sharding, state_sharding=state_sharding,
        batch_sharding=batch_sharding)


def _gather(x, spec):
  """A weight's whole value on every batch shard (`spec`: its sharding over the
  manual batch axes)."""
  for dim, axes in enumerate(spec):
    if axes is not None:
      x = jax.lax.all_gather(x, axes, axis=dim, tiled=True)
  return x


def _reduce(g, spec, batch_axes):
  """Sums a gradient's per-shard partial sums over the batch axes, landing sharded
  like its weight: reduce-scattered over the axes that shard it, summed over the rest."""
  scattered = set()
  for dim, axes in enumerate(spec):
    if axes is not None:
      g = jax.lax.psum_scatter(g, axes, scatter_dimension=dim, tiled=True)
      scattered.update((axes,) if isinstance(axes, str) else axes)
  rest = tuple(a for a in batch_axes if a not in scattered)
  return jax.lax.psum(g, rest) if rest else g


class _BoundStep:
  """The jitted step as (state, batch) -> (state, metrics), called (and lowered) with
  its seed's key and the objective's extra inputs passed in."""

  def __init__(self, jitted_step, *bound_args):
    self.jitted_step, self.bound_args = jitted_step, bound_args

  def __call__(self, state, batch):
    return self.jitted_step(state, batch, *self.bound_args)

  def lower(self, state, batch):
    """Lowered with the bound arguments: its compiled form takes (state, batch,
    *bound_args)."""
    return self.jitted_step.lower(state, batch, *self.bound_args)
