"""Fine-tuning, linearly: task data, weights from `init`, steps, loop, best checkpoint.

`finetune_and_evaluate(config, workdir)` is the whole job (`bertjax train` calls it
for configs with a `task` group). The model starts from `config.init`, a bertjax
workdir (pre-trained or fine-tuned) or a Hugging Face directory: the encoder always
comes from there, the task head too when it has the same kind and shape. The data
order is a function of (seed, step), so a resumed run sees the batches an
uninterrupted one would. After each evaluation the weights with the best
`task.metric` so far are kept in WORKDIR/best, its metrics in WORKDIR/best.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertjax import (checkpoint, config_lib, evaluate, flops, hf, hf_weights, loop, reporting,
                     sharding, steps, train)
from bertjax.data import embedded_tasks, tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig
from bertjax.tasks import registry

_FIXED_KEYS = (*(f'model.{k}' for k in train.ARCHITECTURE_KEYS), 'task.kind', 'task.train',
               'task.seq_len', 'seed', 'init')
TASK_FILE = 'task.json'  # the head kind and label names, for evaluate and export


def is_finetune_config(config) -> bool:
  return 'task' in config


@dataclasses.dataclass
class TaskInfo:
  kind: str               # classify, tag or qa
  model_kind: str         # the heads.build kind
  label_names: tuple[str, ...]
  num_labels: int

  @classmethod
  def read(cls, workdir: str) -> 'TaskInfo':
    with open(os.path.join(workdir, TASK_FILE), encoding='utf-8') as f:
      d = json.load(f)
    return cls(d['kind'], d['model_kind'], tuple(d['label_names']), d['num_labels'])

  def write(self, workdir: str) -> None:
    if jax.process_index() != 0:
      return
    path = os.path.join(workdir, TASK_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(dataclasses.asdict(self), f, indent=2)
    os.replace(path + '.tmp', path)


def objective(task, model_cfg: BertConfig, num_labels: int) -> steps.Objective:
  def counts(batch):
    return dict(count=task.batch_count(batch))

  def loss(sums, c):
    return sums['loss_sum'] / jnp.maximum(c['count'], 1.0)

  return steps.Objective(
      build_model=lambda key: heads.build(task.MODEL_KIND, model_cfg, num_labels=num_labels,
                                          rngs=nnx.Rngs(params=key)),
      batch_sums=task.batch_sums, batch_counts=counts, loss_from_sums=loss,
      metrics_from_sums=task.train_metrics, evaluate=task.predict)


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """The rows of global batch `step`: epochs are permutations seeded by (seed, epoch),
  read in order, a batch crossing into the next epoch where they meet. Shared with
  the `transformers` side-by-side, which must see the same batches."""
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, positions = flat // num_rows, flat % num_rows
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_rows)
    out[epochs == epoch] = perm[positions[epochs == epoch]]
  return out


def source_tensors(init: str, num_layers: int) -> tuple[dict, str, int]:
  """The weights of `init` under `transformers` names: (tensors, head kind, labels)."""
  if os.path.isdir(os.path.join(init, 'checkpoints')):
    kind, labels, params, _ = workdir_params(init)
    return hf_weights.to_hf(params, kind, num_layers), kind, labels
  cfg, raw = hf.read_hf_config(init)
  tensors = hf.read_safetensors(init)
  kind = hf.checkpoint_kind(tensors, raw)
  if kind == 'encoder':  # a bare BertModel: its names lack the 'bert.' prefix
    tensors, kind = {f'bert.{k}': v for k, v in tensors.items()}, 'pretraining'
  return tensors, kind, hf.num_labels(tensors, kind)


def initial_params(init: str, fresh, model_kind: str, num_labels: int, num_layers: int):
  """`fresh` params with the encoder (and a matching head) of `init` put in."""
  tensors, source_kind, source_labels = source_tensors(init, num_layers)
  if source_kind != model_kind:
    tensors = {k: v for k, v in tensors.items() if k.startswith('bert.')}
  elif model_kind != 'question_answering' and source_labels != num_labels:
    raise UserError(f'{init} has a {source_labels}-label {model_kind} head but the task has '
                    f'{num_labels} labels; fine-tune from the pre-trained encoder it came '
                    'from instead, or give task.labels the checkpoint\'s labels')
  params, missing = hf_weights.from_hf(tensors, fresh, model_kind, num_layers)
  encoder_missing = [p for p in missing if p[0] == 'bert' and p[1] != 'pooler']
  if encoder_missing:
    raise UserError(f'{init} lacks {len(encoder_missing)} encoder weight(s), e.g. '
                    f'{".".join(map(str, encoder_missing[0]))}; is it a BERT checkpoint?')
  if missing:
    reporting.log('initialised fresh (not in the checkpoint): '
                  + ', '.join(sorted({'.'.join(map(str, p[:2])) for p in missing})))
  return params


def workdir_params(workdir: str, step: int | None = None):
  """(head kind, num_labels, params, BertConfig) of a workdir: a fine-tuned one's best
  weights (or `step` of its checkpoints), else the pre-training checkpoint."""
  config = config_lib.load_workdir_config(workdir)
  tok = tokenizer_lib.load(os.path.join(workdir, 'tokenizer'))
  cfg = train.model_config(config, tok.vocab_size)
  if os.path.isfile(os.path.join(workdir, TASK_FILE)):
    info = TaskInfo.read(workdir)
    kind, labels = info.model_kind, info.num_labels
    best = os.path.isdir(os.path.join(workdir, 'best')) and step is None
  else:
    kind, labels, best = 'pretraining', 2, False
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: heads.build(kind, cfg, num_labels=labels, rngs=nnx.Rngs(0)))))
  _, params = checkpoint.restore_params(workdir, abstract, step,
                                        subdir='best' if best else 'checkpoints')
  return kind, labels, params, cfg


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
  if not os.path.isdir(config.init):
    raise UserError(f'init={config.init!r} is not a directory; point it at a bertjax '
                    'workdir or a Hugging Face model directory')
  os.makedirs(workdir, exist_ok=True)
  if config.task.train == 'embedded':
    embedded_tasks.materialize(config.task, os.path.join(workdir, 'data'), config.seed)
  train.adopt_architecture(config)
  train.check_and_write_config(config, workdir, _FIXED_KEYS)
  train.adopt_tokenizer(config.init, workdir)
  tok = tokenizer_lib.load(os.path.join(workdir, 'tokenizer'))
  model_cfg = train.model_config(config, tok.vocab_size)
  if config.task.seq_len > model_cfg.max_position_embeddings:
    raise UserError(f'task.seq_len {config.task.seq_len} exceeds the model\'s '
                    f'{model_cfg.max_position_embeddings} position embeddings')
  task, train_split, eval_split = load_task_data(config, tok)
  info = TaskInfo(config.task.kind, task.MODEL_KIND, tuple(train_split.label_names),
                  max(1, len(train_split.label_names)))
  info.write(workdir)
  metric = config.task.metric
  n_steps = total_steps(config, len(train_split))
  eval_every = config.train.eval_every or math.ceil(len(train_split) / config.train.batch_size)

  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  fns = steps.build(config, model_cfg, mesh, rules, objective(task, model_cfg, info.num_labels),
                    total_steps=n_steps)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)

  def start_fresh(_):
    # Heads `init` lacks keep these freshly initialised values.
    fresh = jax.device_get(fns.init(jax.random.key(config.seed))['params'])
    params = initial_params(config.init, fresh, task.MODEL_KIND, info.num_labels,
                            model_cfg.num_layers)
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
    rows = batch_indices(len(train_split), config.train.batch_size, step, config.seed)
    return sharding.global_batch(sharding.process_rows(train_split.features, rows),
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
  path = os.path.join(workdir, 'best.json')
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _write_best(workdir: str, best: dict) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'best.json')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(best, f, indent=2)
  os.replace(path + '.tmp', path)
