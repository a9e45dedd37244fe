"""Evaluation of fine-tuned models: batched prediction over a split, the task's
metrics, and `bertjax evaluate --workdir W`, which prints them as a table."""
from __future__ import annotations

import os

import jax
import numpy as np

from bertjax import config_lib, sharding, steps
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
  from bertjax import finetune
  from bertjax.data import tokenizer as tokenizer_lib
  from bertjax.tasks import registry
  config = config_lib.load_workdir_config(workdir)
  if not finetune.is_finetune_config(config):
    raise UserError(f'{workdir} is a pre-training workdir: its held-out MLM/NSP metrics '
                    'are the eval_ lines of its metrics.jsonl, and re-running `bertjax '
                    'train` on it evaluates again; `bertjax evaluate` reads fine-tuned ones')
  if not os.path.isfile(os.path.join(workdir, finetune.TASK_FILE)):
    raise UserError(f'{workdir} has not started fine-tuning yet (no {finetune.TASK_FILE})')
  info = finetune.TaskInfo.read(workdir)
  task = registry.task_module(info.kind)
  tok = tokenizer_lib.load(os.path.join(workdir, 'tokenizer'))
  task_cfg = config.task
  if data:
    task_cfg = config_lib.ConfigDict(config.task.to_dict())
    task_cfg.eval = data
  split = task.load_split(task_cfg, 'eval', tok, config.task.seq_len,
                          label_names=info.label_names)
  _, _, params, model_cfg = finetune.workdir_params(workdir, step)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  fns = steps.build(config, model_cfg, mesh, rules,
                    finetune.objective(task, model_cfg, info.num_labels), total_steps=1)
  with sharding.activate(mesh, rules):
    params = jax.device_put(params, fns.state_sharding['params'])
    results = evaluate_split(fns, params, task, split, config.train.eval_batch_size)
  print(format_metrics(results, split.source))
  return results
