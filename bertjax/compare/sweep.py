"""`bertjax compare`: pre-train one model per masking variant under one budget, evaluate
each the same ways, fine-tune each downstream, and write the report.

A sweep config (e.g. experiments/masking_sweep.py) holds `variants` (masking kinds),
`pretrain` (one pre-training config; only `data.masking.kind` differs between the
variants, so data, seed, steps and tokens are equal), `downstream` (a fine-tuning
config whose `init` becomes each variant's workdir) and `downstream_seeds`.

WORKDIR/VARIANT/pretrain and WORKDIR/VARIANT/downstream_SEED are ordinary workdirs
(config.json, checkpoints, metrics.jsonl, TensorBoard); WORKDIR/VARIANT/result.json
marks a finished variant. Re-running the command resumes: finished variants are
read back, an interrupted run continues from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import numpy as np

from bertjax import config_lib, finetune, reporting, sharding, steps, train, weights
from bertjax.compare.report import (VariantResult, format_table, loss_curve_from_metrics,
                                    read_metrics, write_report)
from bertjax.data import masking, pipeline, tokenizer as tokenizer_lib
from bertjax.errors import UserError

RESULT_FILE = 'result.json'


def validate(config) -> None:
  for key in ('variants', 'pretrain', 'downstream', 'downstream_seeds'):
    if key not in config:
      raise UserError(f'the sweep config has no {key!r}; a sweep needs variants, pretrain, '
                      'downstream and downstream_seeds (see experiments/masking_sweep.py)')
  if not config.variants:
    raise UserError('the sweep config lists no variants: set variants, e.g. '
                    "('token', 'whole_word', 'span', 'ngram')")
  unknown = [v for v in config.variants if v not in masking.KINDS]
  if unknown:
    raise UserError(f'variants {unknown} are not masking kinds; choose from {masking.KINDS}')
  if len(set(config.variants)) != len(config.variants):
    raise UserError(f'variants {list(config.variants)} name a kind twice')


def variant_config(config, kind: str):
  """The shared pre-training config with this variant's masking."""
  c = config_lib.ConfigDict(config.pretrain.to_dict())
  c.data.masking.kind = kind
  return c.lock()


def downstream_config(config, init: str, seed: int):
  c = config_lib.ConfigDict(config.downstream.to_dict())
  c.init, c.seed = init, seed
  return c.lock()


def shared_tokenizer(config, workdir: str) -> str:
  """One tokenizer for every variant (trained once on the shared corpus), so the
  variants differ in masking only."""
  directory = os.path.join(workdir, 'tokenizer')
  if tokenizer_lib.find(directory) is None:
    from bertjax.data import corpus
    data = config.pretrain.data
    documents = corpus.load_documents(data.corpus, num_embedded=data.embedded_documents,
                                      seed=config.pretrain.seed, doc_mode=data.doc_mode)
    pipeline.load_or_train_tokenizer(data, documents, workdir, seed=config.pretrain.seed)
  return directory


def held_out_mlm_accuracy(config, workdir: str, kind: str) -> float:
  """MLM accuracy of `workdir`'s weights on the held-out split masked with `kind`
  (same rows, same seed for every variant, so the `token` figures compare)."""
  c = config_lib.ConfigDict(config.to_dict())
  c.data.masking.kind = kind
  data = pipeline.build(c.data, batch_size=c.train.batch_size, eval_batches=c.train.eval_batches,
                        seed=c.seed, workdir=workdir)
  model_cfg = config_lib.model_config(c, data.tokenizer.vocab_size)
  mesh, rules = sharding.make_mesh(c.mesh), sharding.rules_from_config(c.mesh)
  fns = steps.build(c, model_cfg, mesh, rules)
  source = weights.open_weights(workdir)
  params, _ = weights.transplant(source, weights.initial_params('pretraining', model_cfg),
                                 'pretraining')
  with sharding.activate(mesh, rules):
    params = jax.device_put(params, fns.state_sharding['params'])
    return train.evaluate(fns, params, data)['mlm_accuracy']


def _training_figures(metrics_path: str) -> tuple[float, float]:
  """(seconds spent in train steps, median tokens/s) from a metrics.jsonl; the first
  logged interval holds compilation and is left out of tokens/s."""
  rows = {}
  for record in read_metrics(metrics_path):
    if 'step_time' in record:
      rows[record['step']] = record  # a resumed run re-logs steps; the last wins
  ordered = [rows[s] for s in sorted(rows)]
  seconds, previous = 0.0, 0
  for r in ordered:
    seconds += r['step_time'] * (r['step'] - previous)
    previous = r['step']
  speeds = [r['tokens_per_sec'] for r in ordered[1:]] or [ordered[0]['tokens_per_sec']]
  return seconds, float(np.median(speeds))


def run_variant(config, kind: str, workdir: str, tokenizer_dir: str, config_spec: str):
  pre = variant_config(config, kind)
  pre_dir = os.path.join(workdir, 'pretrain')
  os.makedirs(pre_dir, exist_ok=True)
  if tokenizer_lib.find(os.path.join(pre_dir, 'tokenizer')) is None:
    shutil.copytree(tokenizer_dir, os.path.join(pre_dir, 'tokenizer'), dirs_exist_ok=True)
  own = train.train_and_evaluate(pre, pre_dir)
  if not own:  # preempted: the checkpoint is saved, the sweep resumes from it
    return None
  token = own['mlm_accuracy'] if kind == 'token' else held_out_mlm_accuracy(pre, pre_dir,
                                                                             'token')
  writer = reporting.MetricsWriter(pre_dir)
  writer.write(pre.train.steps, dict(mlm_accuracy_token_masking=token,
                                     mlm_accuracy_own_masking=own['mlm_accuracy']),
               prefix='compare_')
  writer.close()
  downstream = []
  for seed in config.downstream_seeds:
    reporting.log(f'{kind}: fine-tuning downstream, seed {seed}')
    ft = downstream_config(config, pre_dir, seed)
    metrics = finetune.finetune_and_evaluate(ft, os.path.join(workdir, f'downstream_{seed}'))
    if not metrics:
      return None
    downstream.append(metrics[ft.task.metric])
  seconds, tokens_per_sec = _training_figures(os.path.join(pre_dir, 'metrics.jsonl'))
  return VariantResult(
      name=kind, config_path=config_spec, config_hash=config_lib.config_hash(pre),
      mlm_accuracy_token=token, mlm_accuracy_own=own['mlm_accuracy'],
      downstream_metric_name=config.downstream.task.metric, downstream=downstream,
      tokens_per_sec=tokens_per_sec, wall_seconds=seconds, steps=pre.train.steps,
      tokens=pre.train.steps * pre.train.batch_size * pre.data.seq_len,
      loss_curve=loss_curve_from_metrics(os.path.join(pre_dir, 'metrics.jsonl')))


def run(config, workdir: str, config_spec: str) -> list[VariantResult]:
  """Runs (or resumes) the sweep and writes WORKDIR/report.md, report.csv and plots."""
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(config_lib.to_json(config))
  os.replace(path + '.tmp', path)
  # The variants' steps compile to the same programs (only the data differs): a
  # persistent compilation cache compiles each once for the whole sweep.
  jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'compilation_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  tokenizer_dir = shared_tokenizer(config, workdir)
  results = []
  for i, kind in enumerate(config.variants):
    variant_dir = os.path.join(workdir, kind)
    result_path = os.path.join(variant_dir, RESULT_FILE)
    if os.path.isfile(result_path):
      with open(result_path, encoding='utf-8') as f:
        results.append(VariantResult(**json.load(f)))
      reporting.log(f'variant {i + 1}/{len(config.variants)} {kind}: done before, read back')
      continue
    reporting.log(f'variant {i + 1}/{len(config.variants)}: {kind} masking')
    result = run_variant(config, kind, variant_dir, tokenizer_dir, config_spec)
    if result is None:
      reporting.log('preempted: re-run the same command to resume the sweep')
      return results
    with open(result_path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(dataclasses.asdict(result), f, indent=1)
    os.replace(result_path + '.tmp', result_path)
    results.append(result)
  paths = write_report(results, workdir, title=config.title, notes=list(config.notes))
  print(format_table(results))
  reporting.log(f'report: {paths["markdown"]} (table), {paths["csv"]}, plots '
                + ', '.join(paths['plots']))
  return results
