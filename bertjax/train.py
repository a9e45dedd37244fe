"""Pre-training, linearly: mesh, data, state, step, restore, loop, evaluate.

`train_and_evaluate(config, workdir)` is the whole job; `bertjax train` is a thin
wrapper. Re-running it on a workdir resumes from the latest checkpoint; on a
finished workdir it only evaluates.
"""
from __future__ import annotations

import jax
import numpy as np

from bertjax import (checkpoint, config_checks, config_lib, distill, flops, init_weights, loop, optim, reporting, run_lock, sharding,
                     steps, workdir as workdir_lib)
from bertjax.data import pipeline
from bertjax.tasks import pretrain

# Config keys a resumed run must share with the run that wrote the checkpoint (the
# compute dtype, attention kernel, steps or learning rate may change).
FIXED_KEYS = (*(f'model.{k}' for k in init_weights.ARCHITECTURE_KEYS), 'data.tokenizer',
              'data.seq_len', 'data.corpus', 'seed', *optim.FREEZE_KEYS)


def train_and_evaluate(config, workdir: str, *, profile: bool = False) -> dict[str, float]:
  """Trains `config.train.steps` steps (resuming if possible); returns eval metrics.

  SIGTERM (how TPU VMs are preempted) saves a checkpoint at the current step and
  returns {}; Ctrl-C saves too, then raises KeyboardInterrupt. Re-running the same
  command resumes exactly there.
  """
  config_checks.validate(config)
  workdir_lib.create(workdir)
  with run_lock.RunLock(workdir):
    return _train(config, workdir, profile)


def _train(config, workdir: str, profile: bool) -> dict[str, float]:
  if config.init:
    init_weights.adopt_architecture(config)
  workdir_lib.check_config(config, workdir, FIXED_KEYS)
  teacher_path = config.distill.teacher
  if config.init or teacher_path:  # a student takes its teacher's tokenizer
    init_weights.adopt_tokenizer(config.init or teacher_path, workdir)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  data = pipeline.build(config.data, batch_size=config.train.batch_size,
                        eval_batches=config.train.eval_batches, seed=config.seed, workdir=workdir)
  # Written once the tokenizer and data it describes have been checked.
  workdir_lib.write_config(config, workdir)
  model_cfg = config_lib.model_config(config, data.tokenizer.vocab_size)
  total_steps = config.train.steps
  teacher = distill.open_teacher(teacher_path, model_cfg, mesh, rules) if teacher_path else None
  objective = distill.pretraining(config.distill, model_cfg, teacher) if teacher else None
  fns = steps.build(model_cfg, config.optim, mesh, rules, objective,
                    **config_lib.step_settings(config))

  train_iter = pipeline.train_iterator(data, config.data.workers)
  mngr = checkpoint.manager(workdir, keep=config.train.keep_checkpoints)

  def start_fresh(imported_params):
    if imported_params is not None:
      reporting.log(f'starting from the weights imported from {config.init}')
      return fns.init_from_params(imported_params)
    if config.init:
      reporting.log(f'starting from the weights of {config.init}')
      fresh = fns.init(jax.random.key(config.seed))['params']
      return fns.init_from_params(init_weights.initial_params(config.init, fresh, 'pretraining'))
    if teacher and config.distill.init_from_teacher:
      # Only the student's shapes are needed: its weights all come from the teacher.
      return fns.init_from_params(
          distill.student_from_teacher(teacher, fns.abstract_state['params']))
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
