"""Pre-training, linearly: mesh, data, state, step, restore, loop, evaluate.

`train_and_evaluate(config, workdir)` is the whole job; `bertjax train` is a thin
wrapper. Re-running it on a workdir resumes from the latest checkpoint; on a
finished workdir it only evaluates.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from bertjax import (checkpoint, config_lib, flops, hf, hf_weights, loop, reporting, sharding,
                     steps)
from bertjax.data import pipeline, tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain

ARCHITECTURE_KEYS = ('num_layers', 'hidden_size', 'num_heads', 'intermediate_size',
                 'max_position_embeddings', 'type_vocab_size', 'layer_norm_eps')
# Config keys a resumed run must share with the run that wrote the checkpoint (the
# compute dtype, attention kernel, steps or learning rate may change).
_FIXED_KEYS = (*(f'model.{k}' for k in ARCHITECTURE_KEYS), 'data.tokenizer', 'data.seq_len',
               'data.corpus', 'seed')


def check_and_write_config(config, workdir: str, fixed_keys=_FIXED_KEYS) -> None:
  """Writes the resolved config; refuses to resume with a different model or data.

  A workdir made by `bertjax import` fixes the architecture and tokenizer: the
  experiment's own `model` and `data.tokenizer` give way to the imported ones.
  """
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
    if old.get('init') and not config.init:
      with config.unlocked():
        config.init = old['init']
        config.model = config_lib.ConfigDict(old['model'])
        config.data.tokenizer = config_lib.ConfigDict(old['data']['tokenizer'])
      reporting.log(f'{workdir} was imported from {old["init"]}: training its '
                    f'{old["model"]["num_layers"]}-layer, {old["model"]["hidden_size"]}-wide '
                    'model with its tokenizer')
    new = json.loads(config_lib.to_json(config))
    started = os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
    for key in fixed_keys if started else ():
      a, b = old, new
      for part in key.split('.'):
        a, b = a.get(part), b.get(part)
      if a != b:
        raise UserError(f'{workdir} was trained with {key}={a}, but the config says {b}; '
                        'use a new --workdir, or the original config to resume')
  if jax.process_index() == 0:
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(config_lib.to_json(config))
    os.replace(tmp, path)


def adopt_architecture(config) -> None:
  """Weights fix the architecture: take it from `config.init` (dropout, dtype and
  attention implementation stay the experiment's)."""
  if os.path.isdir(os.path.join(config.init, 'checkpoints')):
    source = config_lib.load_workdir_config(config.init).model
  else:
    source = config_lib.model_from_bert_config(hf.read_hf_config(config.init)[0])
  for key in ARCHITECTURE_KEYS:
    config.model[key] = source[key]


def adopt_tokenizer(init: str, workdir: str) -> None:
  """A run that starts from other weights must use their tokenizer: copy it over."""
  dest = os.path.join(workdir, 'tokenizer')
  if tokenizer_lib.find(dest) is not None or jax.process_index() != 0:
    return
  if os.path.isdir(os.path.join(init, 'checkpoints')):
    tokenizer_lib.save(tokenizer_lib.load(os.path.join(init, 'tokenizer')), dest)
  elif os.path.isdir(init):
    tokenizer_lib.save(hf.load_hf_tokenizer(init), dest)
  else:
    raise UserError(f'init={init!r} is neither a bertjax workdir nor a Hugging Face '
                    'directory; point --config.init at one')


def initial_params(init: str, fns: steps.Steps):
  """Params to start from: a bertjax workdir's latest checkpoint (e.g. phase 1 for
  phase 2) or a Hugging Face directory's weights (missing heads initialised)."""
  abstract = fns.abstract_state['params']
  if os.path.isdir(os.path.join(init, 'checkpoints')):
    _, params = checkpoint.restore_params(init, abstract)
    return params
  cfg, raw = hf.read_hf_config(init)
  tensors = hf.read_safetensors(init)
  fresh = jax.device_get(fns.init(jax.random.key(0))['params'])
  params, _ = hf_weights.into_pretraining(tensors, fresh, hf.checkpoint_kind(tensors, raw),
                                         cfg.num_layers)
  return params


def model_config(config, vocab_size: int) -> BertConfig:
  return BertConfig.from_dict({**config.model.to_dict(), 'vocab_size': vocab_size})


def train_and_evaluate(config, workdir: str, *, profile: bool = False) -> dict[str, float]:
  """Trains `config.train.steps` steps (resuming if possible); returns eval metrics.

  SIGTERM (how TPU VMs are preempted) saves a checkpoint at the current step and
  returns {}; Ctrl-C saves too, then raises KeyboardInterrupt. Re-running the same
  command resumes exactly there.
  """
  os.makedirs(workdir, exist_ok=True)
  if config.init:
    adopt_architecture(config)
  check_and_write_config(config, workdir)
  if config.init:
    adopt_tokenizer(config.init, workdir)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  data = pipeline.build(config.data, batch_size=config.train.batch_size,
                        eval_batches=config.train.eval_batches, seed=config.seed, workdir=workdir)
  model_cfg = model_config(config, data.tokenizer.vocab_size)
  if config.data.seq_len > model_cfg.max_position_embeddings:
    raise UserError(f'data.seq_len {config.data.seq_len} exceeds the model\'s '
                    f'{model_cfg.max_position_embeddings} position embeddings')
  total_steps = config.train.steps
  fns = steps.build(config, model_cfg, mesh, rules)

  train_iter = pipeline.train_iterator(data, config.data.workers)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)

  def start_fresh(imported_params):
    if imported_params is not None:
      reporting.log(f'starting from the weights imported from {config.init}')
      return fns.init_from_params(imported_params)
    if config.init:
      reporting.log(f'starting from the weights of {config.init}')
      return fns.init_from_params(initial_params(config.init, fns))
    return fns.init(jax.random.key(config.seed))

  state, start = loop.restore_or_start(mngr, fns.abstract_state, start_fresh, workdir, train_iter)

  n_params = sum(x.size for x in jax.tree.leaves(fns.abstract_state['params']))
  reporting.log(f'model: {config.model.preset} ({n_params / 1e6:.2f}M parameters, vocab '
                f'{model_cfg.vocab_size}); {data.num_train_instances} training sequences; '
                f'mesh {dict(mesh.shape)}; {total_steps} steps of {config.train.batch_size}')
  step_flops = (flops.train_flops_per_token(model_cfg, config.data.seq_len,
                                            config.data.masking.max_predictions)
                * config.train.batch_size * config.data.seq_len)
  peak = flops.peak_flops(jax.devices()[0])
  job = loop.Job(
      train_step=fns.train_step,
      next_batch=lambda step: sharding.global_batch(next(train_iter), fns.batch_sharding),
      summarise=lambda pending, seconds, n: summarise(pending, seconds, n, step_flops, peak),
      show=_progress_fields, total_steps=total_steps, log_every=config.train.log_every,
      checkpoint_every=config.train.checkpoint_every, data_iterator=train_iter,
      eval_every=config.train.eval_every,
      evaluate=lambda state: evaluate(fns, state['params'], data))

  writer = reporting.MetricsWriter(workdir)
  with sharding.activate(mesh, rules):
    state = loop.run(job, state, start, workdir=workdir, mngr=mngr, writer=writer,
                     profile=profile)
    if state is None:  # preempted: saved, and a re-run resumes
      return {}
    mngr.close()
    results = evaluate(fns, state['params'], data)
  writer.write(total_steps, results, prefix='eval_')
  writer.close()
  reporting.log(format_eval(results))
  return results


def _progress_fields(metrics: dict[str, float]) -> dict[str, str]:
  return dict(loss=f'{metrics["loss"]:.3f}', mlm_acc=f'{metrics["mlm_accuracy"]:.3f}',
              tok_s=f'{metrics["tokens_per_sec"]:.0f}')


def summarise(metrics_list, seconds: float, steps_done: int, step_flops: float,
               peak: float | None) -> dict[str, float]:
  """Averages per-step metrics over a logging interval and adds throughput and MFU."""
  tokens = sum(float(m['tokens']) for m in metrics_list)
  summary = {k: float(np.mean([m[k] for m in metrics_list]))
             for k in metrics_list[0] if k != 'tokens'}
  summary['learning_rate'] = float(metrics_list[-1]['learning_rate'])
  summary['tokens_per_sec'] = tokens / seconds
  summary['step_time'] = seconds / steps_done
  achieved = step_flops / summary['step_time'] / jax.device_count()
  summary['flops_per_sec_per_device'] = achieved
  if peak:
    summary['mfu'] = achieved / peak
  return summary


def evaluate(fns: steps.Steps, params, data: pipeline.PretrainData):
  """Held-out MLM/NSP metrics, and the accuracy of always predicting the most
  frequent training token, the baseline MLM accuracy must beat."""
  totals, baseline_hits = None, 0.0
  for batch in data.eval_batches:
    sums = jax.device_get(fns.eval_step(params, sharding.global_batch(batch, fns.batch_sharding)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    baseline_hits += float(((batch['mlm_targets'] == data.most_frequent_token)
                            * batch['mlm_weights']).sum())
  results = {k: float(v) for k, v in pretrain.metrics_from_sums(totals).items()}
  del results['loss']
  # Each process saw only its own eval rows; the baseline is counted on the same rows.
  local_count = sum(float(b['mlm_weights'].sum()) for b in data.eval_batches)
  results['majority_baseline_accuracy'] = baseline_hits / max(local_count, 1.0)
  results['mlm_predictions'] = float(totals['mlm_count'])
  return results
def format_eval(results: dict[str, float]) -> str:
  ratio = results['mlm_accuracy'] / max(results['majority_baseline_accuracy'], 1e-9)
  return '\n'.join([
      'held-out evaluation',
      f'  MLM accuracy                      {results["mlm_accuracy"]:.4f}',
      f'  most-frequent-token baseline      {results["majority_baseline_accuracy"]:.4f}'
      f'   (model is {ratio:.1f}x the baseline)',
      f'  MLM loss                          {results["mlm_loss"]:.4f}',
      f'  NSP accuracy                      {results["nsp_accuracy"]:.4f}',
      f'  masked predictions scored         {int(results["mlm_predictions"])}',
  ])
