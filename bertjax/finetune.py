"""Fine-tuning, linearly: task data, weights from `init`, steps, loop, best checkpoint.

`finetune_and_evaluate(config, workdir)` is the whole job (`bertjax train` calls it
for configs with a `task` group). The model starts from `config.init`, a bertjax
workdir (pre-trained or fine-tuned) or a Hugging Face directory: the encoder always
comes from there, the task head too when it has the same kind and shape. The data
order is a function of (seed, step), so a resumed run sees the batches an
uninterrupted one would. After each evaluation the weights with the best
`task.metric` so far are kept in WORKDIR/best, its metrics in WORKDIR/best.json.
With `distill.teacher`, a model fine-tuned on the same task teaches the one trained
here its soft targets (distill.py); checkpoints hold the student alone.
"""
from __future__ import annotations

import functools
import json
import math
import os

import jax
import numpy as np

from bertjax import (checkpoint, config_checks, config_lib, distill, evaluate, flops,
                     init_weights, loop, optim, reporting, run_lock, sharding, steps, storage,
                     train, workdir as workdir_lib)
from bertjax.data import embedded_tasks
from bertjax.errors import UserError
from bertjax.tasks import registry

FIXED_KEYS = (*(f'model.{k}' for k in init_weights.ARCHITECTURE_KEYS), 'task.kind',
              'task.train', 'task.seq_len', 'seed', 'init', *optim.FREEZE_KEYS)


def is_finetune_config(config) -> bool:
  return 'task' in config


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int, *,
                  part: int = 0, parts: int = 1) -> np.ndarray:
  """The rows of global batch `step`: epochs are permutations seeded by (seed, epoch),
  read in order, a batch crossing into the next epoch where they meet. Shared with
  the `transformers` side-by-side, which must see the same batches.

  `part` of `parts` (a process of `jax.process_count()`) gives only that share of
  the batch's positions; the epoch's permutation is built once and kept, so a
  host's work a step is its own rows.
  """
  per_part = batch_size // parts
  flat = step * batch_size + part * per_part + np.arange(per_part)
  epochs, positions = flat // num_rows, flat % num_rows
  out = np.empty(per_part, np.int64)
  for epoch in np.unique(epochs):
    out[epochs == epoch] = epoch_order(num_rows, seed, int(epoch))[positions[epochs == epoch]]
  return out


@functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the rows in `epoch`."""
  order = np.random.default_rng([seed, epoch]).permutation(num_rows)
  order.flags.writeable = False
  return order


def total_steps(config, num_rows: int) -> int:
  if config.train.steps:
    return config.train.steps
  return max(1, math.ceil(config.train.epochs * num_rows / config.train.batch_size))


def load_task_data(config, tok):
  task = registry.task_module(config.task.kind)
  train_split = task.load_split(config.task, 'train', tok, config.task.seq_len)
  eval_split = task.load_split(config.task, 'eval', tok, config.task.seq_len,
                               label_names=train_split.label_names)
  return task, train_split, eval_split


def finetune_and_evaluate(config, workdir: str, *, profile: bool = False) -> dict[str, float]:
  """Fine-tunes (resuming if possible) and returns the best checkpoint's metrics.

  `profile` traces a few steps into WORKDIR/profile; SIGTERM and Ctrl-C save as in
  `train.train_and_evaluate`.
  """
  if not config.init:
    raise UserError('fine-tuning starts from trained weights: set --config.init to a '
                    'bertjax workdir or a Hugging Face model directory')
  init_weights.check_source(config.init)
  config_checks.validate(config)
  workdir_lib.create(workdir)
  with run_lock.RunLock(workdir):
    return _finetune(config, workdir, profile)


def _finetune(config, workdir: str, profile: bool) -> dict[str, float]:
  if config.task.train == 'embedded':
    embedded_tasks.materialize(config.task, os.path.join(workdir, 'data'), config.seed)
  init_weights.adopt_architecture(config)
  workdir_lib.check_config(config, workdir, FIXED_KEYS)
  tok = init_weights.adopt_tokenizer(config.init, workdir)
  model_cfg = config_lib.model_config(config, tok.vocab_size)
  task, train_split, eval_split = load_task_data(config, tok)
  info = workdir_lib.TaskInfo(config.task.kind, task.MODEL_KIND,
                              tuple(train_split.label_names), max(1, len(train_split.label_names)))
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  objective = steps.finetuning(task, model_cfg, info.num_labels,
                               config.task.get('classifier_dropout'))
  teacher_path = config.distill.teacher
  if teacher_path:  # refused before config.json records the run
    teacher = distill.open_task_teacher(teacher_path, task.MODEL_KIND, info.label_names,
                                        info.num_labels, model_cfg, config.task.seq_len,
                                        mesh, rules)
    objective = distill.finetuning(config.distill, objective, task, teacher)
  workdir_lib.write_config(config, workdir)
  info.write(workdir)
  metric = config.task.metric
  n_steps = total_steps(config, len(train_split))
  eval_every = config.train.eval_every or math.ceil(len(train_split) / config.train.batch_size)

  fns = steps.build(model_cfg, config.optim, mesh, rules, objective,
                    **config_lib.step_settings(config, total_steps=n_steps))
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)

  def start_fresh(_):
    # Heads `init` lacks keep these freshly initialised values.
    fresh = fns.init(jax.random.key(config.seed))['params']
    params = init_weights.initial_params(config.init, fresh, task.MODEL_KIND, info.num_labels)
    reporting.log(f'fine-tuning {config.init} on {train_split.source}: {len(train_split)} '
                  f'training rows, {len(eval_split)} eval rows, {n_steps} steps of '
                  f'{config.train.batch_size}')
    return fns.init_from_params(params)

  state, start = loop.restore_or_start(mngr, fns.abstract_state, start_fresh, workdir)

  best = _read_best(workdir)

  def evaluate_state(state):
    results = evaluate.evaluate_split(fns, state['params'], task, eval_split,
                                      config.train.eval_batch_size)
    if metric not in results:
      raise UserError(f'task.metric {metric!r} is not one of this task\'s metrics '
                      f'{sorted(results)}')
    return results

  def keep_best(step, state, results):
    nonlocal best
    if best is None or results[metric] > best['metrics'][metric]:
      best = dict(step=step, metric=metric, metrics=results)
      checkpoint.save_params(workdir, step, state['params'], subdir='best')
      _write_best(workdir, best)

  def batch(step):
    rows = batch_indices(len(train_split), config.train.batch_size, step, config.seed,
                         part=jax.process_index(), parts=jax.process_count())
    return sharding.global_batch({k: v[rows] for k, v in train_split.features.items()},
                                 fns.batch_sharding)

  step_flops = (flops.train_flops_per_token(model_cfg, config.task.seq_len, 0)
                * config.train.batch_size * config.task.seq_len)
  peak = flops.peak_flops(jax.devices()[0])
  job = loop.Job(
      train_step=fns.train_step, next_batch=batch,
      summarise=lambda pending, seconds, n: train.summarise(pending, seconds, n, step_flops, peak),
      show=lambda m: {'loss': f'{m["loss"]:.3f}'},
      show_eval=lambda m: {metric: f'{m[metric]:.4f}'},
      total_steps=n_steps, log_every=config.train.log_every,
      checkpoint_every=config.train.checkpoint_every, eval_every=eval_every,
      evaluate=evaluate_state, after_eval=keep_best, evaluate_last_step=True)
  writer = reporting.MetricsWriter(workdir)
  with sharding.activate(mesh, rules):
    state = loop.run(job, state, start, workdir=workdir, mngr=mngr, writer=writer,
                     profile=profile)
  if state is None:  # preempted: saved, and a re-run resumes
    return {}
  mngr.close()
  writer.write(best['step'], best['metrics'], prefix='best_')
  writer.close()
  reporting.log(f'best {metric} at step {best["step"]} (kept in {workdir}/best):\n'
                + evaluate.format_metrics(best['metrics'], eval_split.source))
  return best['metrics']


def _read_best(workdir: str) -> dict | None:
  path = workdir_lib.path(workdir) / workdir_lib.BEST_METRICS
  return workdir_lib.read_json(path) if path.exists() else None


def _write_best(workdir: str, best: dict) -> None:
  if jax.process_index() == 0:
    storage.write_atomic(workdir_lib.path(workdir) / workdir_lib.BEST_METRICS,
                           json.dumps(best, indent=2))
