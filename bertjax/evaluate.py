"""Evaluation of fine-tuned models: batched prediction over a split, the task's
metrics, and `bertjax evaluate --workdir W`, which prints them as a table."""
from __future__ import annotations

import jax
import numpy as np

from bertjax import config_lib, sharding, steps, weights, workdir as workdir_lib
from bertjax.errors import UserError


def predict_split(fns: steps.Steps, params, features: dict[str, np.ndarray],
                  batch_size: int) -> dict[str, np.ndarray]:
  """`fns.eval_step` outputs for every row of `features`, in order. The last batch
  is filled up by repeating the last row (static shapes); those outputs are dropped."""
  n = len(next(iter(features.values())))
  chunks = []
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < n
    batch = sharding.process_rows(features, np.minimum(rows, n - 1))
    out = jax.device_get(fns.eval_step(params, sharding.global_batch(batch, fns.batch_sharding)))
    chunks.append({k: np.asarray(v)[valid] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def evaluate_split(fns: steps.Steps, params, task, split, batch_size: int) -> dict[str, float]:
  return task.compute_metrics(predict_split(fns, params, split.features, batch_size), split)


def format_metrics(metrics: dict[str, float], source: str) -> str:
  width = max(len(k) for k in metrics)
  lines = [f'evaluation on {source}', f'  {"metric".ljust(width)}  value']
  lines += [f'  {k.ljust(width)}  {v:.4f}' for k, v in sorted(metrics.items())]
  return '\n'.join(lines)


def evaluate_workdir(workdir: str, *, step: int | None = None,
                     data: str | None = None) -> dict[str, float]:
  """Re-evaluates a fine-tuned workdir's best weights (or checkpoint `step`) on its
  eval split, or on `data` (a file or tfds spec of the same task)."""
  from bertjax.tasks import registry
  config = config_lib.load_workdir_config(workdir)
  if 'task' not in config:
    raise UserError(f'{workdir} is a pre-training workdir: its held-out MLM/NSP metrics '
                    'are the eval_ lines of its metrics.jsonl, and re-running `bertjax '
                    'train` on it evaluates again; `bertjax evaluate` reads fine-tuned ones')
  if not workdir_lib.is_finetuned(workdir):
    raise UserError(f'{workdir} has not started fine-tuning yet (no {workdir_lib.TASK})')
  info = workdir_lib.TaskInfo.read(workdir)
  task = registry.task_module(info.kind)
  task_cfg = config.task
  if data:
    task_cfg = config_lib.ConfigDict(config.task.to_dict())
    task_cfg.eval = data
  split = task.load_split(task_cfg, 'eval', weights.open_tokenizer(workdir), config.task.seq_len,
                          label_names=info.label_names)
  source = weights.open_weights(workdir, step)
  model_cfg = source.model_cfg
  params, _ = weights.transplant(
      source, weights.initial_params(info.model_kind, model_cfg, info.num_labels),
      info.model_kind, info.num_labels)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  fns = steps.build(model_cfg, config.optim, mesh, rules,
                    steps.finetuning(task, model_cfg, info.num_labels),
                    **config_lib.step_settings(config, total_steps=1))
  with sharding.activate(mesh, rules):
    params = jax.device_put(params, fns.state_sharding['params'])
    results = evaluate_split(fns, params, task, split, config.train.eval_batch_size)
  print(format_metrics(results, split.source))
  return results
