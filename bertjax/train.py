"""Pre-training, linearly: mesh, data, state, step, restore, loop, evaluate.

`train_and_evaluate(config, workdir)` is the whole job; `bertjax train` is a thin
wrapper. Re-running it on a workdir resumes from the latest checkpoint; on a
finished workdir it only evaluates.
"""
from __future__ import annotations

import json
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bertjax import checkpoint, config_lib, optim, reporting, sharding
from bertjax.data import pipeline
from bertjax.errors import UserError
from bertjax.models.bert import BertConfig
from bertjax.tasks import pretrain

# Config keys a resumed run must share with the run that wrote the checkpoint.
_FIXED_KEYS = ('model', 'data.tokenizer', 'data.seq_len', 'data.corpus', 'seed')


def check_and_write_config(config, workdir: str) -> None:
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
    for key in _FIXED_KEYS if started else ():
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


def model_config(config, vocab_size: int) -> BertConfig:
  return BertConfig.from_dict({**config.model.to_dict(), 'vocab_size': vocab_size})


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains `config.train.steps` steps (resuming if possible); returns eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  check_and_write_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  data = pipeline.build(config, workdir)
  model_cfg = model_config(config, data.tokenizer.vocab_size)
  if config.data.seq_len > model_cfg.max_position_embeddings:
    raise UserError(f'data.seq_len {config.data.seq_len} exceeds the model\'s '
                    f'{model_cfg.max_position_embeddings} position embeddings')
  total_steps = config.train.steps
  optimizer = optim.make_optimizer(config.optim, total_steps)
  schedule = optim.learning_rate_schedule(config.optim, total_steps)
  base_key = jax.random.key(config.seed)

  def init_state(key):
    model = pretrain.build_model(model_cfg, key)
    params = nnx.to_pure_dict(nnx.state(model))
    return dict(step=jnp.zeros((), jnp.int32), params=params,
                opt_state=optimizer.init(params))

  # Shardings: params from their logical axis names, optimizer moments like their
  # params, everything else (step, counters) replicated.
  with sharding.activate(mesh, rules):
    abstract_model = nnx.eval_shape(lambda: pretrain.build_model(model_cfg, base_key))
    params_sharding = nnx.to_pure_dict(
        sharding.param_shardings(nnx.state(abstract_model), mesh, rules))
    abstract_state = jax.eval_shape(init_state, base_key)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sharding = dict(
        step=replicated, params=params_sharding,
        opt_state=optax.tree_map_params(optimizer, lambda _, s: s,
                                        abstract_state['opt_state'], params_sharding,
                                        transform_non_params=lambda _: replicated))
  graphdef = nnx.graphdef(abstract_model)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  batch_shards = sharding.num_batch_shards(mesh, rules)
  if config.train.batch_size % batch_shards:
    raise UserError(f'train.batch_size {config.train.batch_size} does not split over the '
                    f'{batch_shards} batch shards of mesh {dict(mesh.shape)}; use a multiple '
                    f'of {batch_shards}')

  def train_step(state, batch):
    # Dropout derives from (seed, step): a resumed run draws the same masks.
    dropout_key = jax.random.fold_in(base_key, state['step'])

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      return pretrain.loss_and_metrics(model, batch, nnx.Rngs(dropout=dropout_key))

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics['learning_rate'] = schedule(state['step'])
    metrics['grad_norm'] = optax.tree.norm(grads)
    return dict(step=state['step'] + 1, params=params, opt_state=opt_state), metrics

  def eval_step(params, batch):
    return pretrain.eval_counts(nnx.merge(graphdef, params), batch)

  def init_from_params(params):
    return dict(step=jnp.zeros((), jnp.int32), params=params,
                opt_state=optimizer.init(params))

  with sharding.activate(mesh, rules):
    p_init = jax.jit(init_state, out_shardings=state_sharding)
    p_init_from_params = jax.jit(init_from_params, in_shardings=(params_sharding,),
                                 out_shardings=state_sharding)
    p_train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                           out_shardings=(state_sharding, replicated), donate_argnums=0)
    p_eval_step = jax.jit(eval_step, in_shardings=(params_sharding, batch_sharding),
                          out_shardings=replicated)

  train_iter = iter(data.train.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)))
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)
  abstract_with_sharding = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)
  state = checkpoint.restore(mngr, abstract_with_sharding, train_iter)
  if state is None:
    state = p_init(base_key)
    start = 0
  elif 'step' not in state:  # imported weights: fresh optimizer, step 0
    state = p_init_from_params(state['params'])
    start = 0
    reporting.log(f'starting from the weights imported from {config.init}')
  else:
    start = int(state['step'])
    reporting.log(f'resumed from step {start} in {workdir}')

  n_params = sum(x.size for x in jax.tree.leaves(abstract_state['params']))
  reporting.log(f'model: {config.model.preset} ({n_params / 1e6:.2f}M parameters, vocab '
                f'{model_cfg.vocab_size}); {data.num_train_instances} training sequences; '
                f'mesh {dict(mesh.shape)}; {total_steps} steps of {config.train.batch_size}')

  writer = reporting.MetricsWriter(workdir)
  bar = reporting.progress_bar(start, total_steps)
  pending, last_time, last_step = [], time.perf_counter(), start
  with sharding.activate(mesh, rules):
    for step in range(start, total_steps):
      batch = sharding.global_batch(next(train_iter), batch_sharding)
      state, metrics = p_train_step(state, batch)
      pending.append(metrics)
      done = step + 1
      if done % config.train.log_every == 0 or done == total_steps:
        summary = _summarise(jax.device_get(pending), time.perf_counter() - last_time,
                             done - last_step)
        if not np.isfinite(summary['loss']):
          mngr.wait_until_finished()
          raise UserError(f'the loss became {summary["loss"]} by step {done}; the last '
                          f'good checkpoint (step {mngr.latest_step()}) is kept. Lower '
                          '--config.optim.learning_rate or check the data')
        writer.write(done, summary)
        bar.set_postfix(loss=f'{summary["loss"]:.3f}', mlm_acc=f'{summary["mlm_accuracy"]:.3f}',
                        tok_s=f'{summary["tokens_per_sec"]:.0f}')
        pending, last_time, last_step = [], time.perf_counter(), done
      if done % config.train.checkpoint_every == 0 or done == total_steps:
        checkpoint.save(mngr, done, state, train_iter)
      bar.update(1)
    bar.close()

    mngr.wait_until_finished()
    mngr.close()
    results = evaluate(p_eval_step, state['params'], data, batch_sharding)
  writer.write(total_steps, results, prefix='eval_')
  writer.close()
  reporting.log(format_eval(results))
  return results


def _summarise(metrics_list, seconds: float, steps: int) -> dict[str, float]:
  """Averages per-step metrics over a logging interval and adds throughput."""
  tokens = sum(float(m['tokens']) for m in metrics_list)
  summary = {k: float(np.mean([m[k] for m in metrics_list]))
             for k in metrics_list[0] if k != 'tokens'}
  summary['learning_rate'] = float(metrics_list[-1]['learning_rate'])
  summary['tokens_per_sec'] = tokens / seconds
  summary['step_time'] = seconds / steps
  return summary


def evaluate(p_eval_step, params, data: pipeline.PretrainData, batch_sharding):
  """Held-out MLM/NSP metrics, and the accuracy of always predicting the most
  frequent training token, the baseline MLM accuracy must beat."""
  totals, baseline_hits = None, 0.0
  for batch in data.eval_batches:
    counts = jax.device_get(p_eval_step(params, sharding.global_batch(batch, batch_sharding)))
    totals = counts if totals is None else jax.tree.map(np.add, totals, counts)
    baseline_hits += float(((batch['mlm_targets'] == data.most_frequent_token)
                            * batch['mlm_weights']).sum())
  results = pretrain.eval_summary(totals)
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
