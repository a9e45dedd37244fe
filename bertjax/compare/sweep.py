"""`bertjax compare`: pre-train one model per masking variant under one budget, evaluate
each the same ways, fine-tune each downstream, and write the report.

A sweep config (e.g. experiments/masking_sweep.py) holds `variants` (names),
`variant_overrides` (name -> override strings on `pretrain`, e.g.
'data.masking.rate=0.4'; a name that is a masking kind and has none just sets that
kind), `pretrain` (one pre-training config; data, seed, steps and tokens are equal
for every variant), `downstream` (a fine-tuning config whose `init` becomes each
variant's workdir; named `downstream_name`, else its task kind), optionally
`more_downstream` (name -> fine-tuning config: further tasks, each fine-tuned the
same way), `downstream_seeds` and `pretrain_seeds`. A variant that changes
the rate without setting max_predictions gets the max_predictions that holds it. A
`pmi` variant without a vocabulary gets WORKDIR/pmi_vocab.json, built once from the
shared tokenizer and the training documents (`pmi_min_count`, `pmi_size`).

Every variant is also evaluated under the common masking (token, 15%, 80/10/10,
max_predictions for 15%), so its held-out MLM accuracy compares across variants.

WORKDIR/VARIANT/pretrain and WORKDIR/VARIANT/downstream_SEED (the first task;
downstream_TASK_SEED for the others) are ordinary workdirs (config.json,
checkpoints, metrics.jsonl, TensorBoard); with several pre-training seeds the later
ones add pretrain_seedS and downstream[_TASK]_seedS_SEED.
WORKDIR/VARIANT/result.json marks a finished variant. Re-running the command
resumes: finished variants are read back (a result.json from before a task was
added, e.g. of a one-task sweep, gets that task's fine-tunes now), an interrupted
run continues from its last checkpoint.

WORKDIR may be a local directory or a URL (`gs://bucket/sweep`): every file goes
through bertjax.storage, the report is drawn on local disk and then written there,
and JAX's compilation cache stays on local disk (WORKDIR/compilation_cache, or the
user's cache directory for a URL).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from bertjax import (compilation_cache, config_checks, config_lib, finetune, reporting, sharding,
                     steps, storage, train, weights, workdir as workdir_lib)
from bertjax.compare.report import (VariantResult, format_table, loss_curve_from_metrics,
                                    read_metrics, write_report)
from bertjax.data import masking, pipeline, pmi, tokenizer as tokenizer_lib
from bertjax.errors import UserError

RESULT_FILE = 'result.json'
PMI_VOCAB = 'pmi_vocab.json'
# The masking every variant is also evaluated under (BERT's).
COMMON_MASKING = dict(kind='token', rate=0.15, mask_prob=0.8, random_prob=0.1)


def validate(config) -> None:
  for key in ('variants', 'pretrain', 'downstream', 'downstream_seeds'):
    if key not in config:
      raise UserError(f'the sweep config has no {key!r}; a sweep needs variants, pretrain, '
                      'downstream and downstream_seeds (see experiments/masking_sweep.py)')
  if not config.variants:
    raise UserError('the sweep config lists no variants: set variants, e.g. '
                    "('token', 'whole_word', 'span', 'ngram')")
  overrides = _overrides(config)
  unknown = [v for v in config.variants if v not in masking.KINDS and v not in overrides]
  if unknown:
    raise UserError(f'variants {unknown} are neither masking kinds ({", ".join(masking.KINDS)}) '
                    'nor named in variant_overrides; add them there, e.g. '
                    "variant_overrides.NAME=('data.masking.rate=0.4',)")
  if len(set(config.variants)) != len(config.variants):
    raise UserError(f'variants {list(config.variants)} name a variant twice')
  names = [name for name, _ in downstream_tasks(config)]
  if len(set(names)) != len(names):
    raise UserError(f'downstream tasks {names} name a task twice; give more_downstream '
                    'tasks names other than downstream_name')
  for name, task in downstream_tasks(config)[1:]:
    config_checks.validate_finetune(task, f'more_downstream.{name}.', needs_init=False)
  for name in config.variants:  # an unknown key or a bad value names the variant now
    try:
      config_checks.validate_pretrain(variant_config(config, name, PMI_VOCAB), 'pretrain.')
    except UserError as e:
      raise UserError(e.args[0] if str(e).startswith('sweep variant') else
                      f'sweep variant {name!r}: {e}') from None


def _overrides(config) -> dict:
  return dict(config.variant_overrides) if 'variant_overrides' in config else {}


def variant_config(config, name: str, pmi_vocab: str = ''):
  """The shared pre-training config with this variant's overrides (see the module
  docstring); `pmi_vocab` fills an empty data.masking.pmi_vocab."""
  c = config_lib.ConfigDict(config.pretrain.to_dict()).lock()
  overrides = list(_overrides(config).get(name, ()))
  if name in masking.KINDS:
    overrides.insert(0, f'data.masking.kind={name}')
  try:
    config_lib.apply_overrides(c, overrides)
  except UserError as e:
    raise UserError(f'sweep variant {name!r}: {e}') from None
  m = c.data.masking
  named = {o.partition('=')[0].strip() for o in overrides}
  if m.rate != config.pretrain.data.masking.rate and 'data.masking.max_predictions' not in named:
    m.max_predictions = masking.predictions_for(m.rate, c.data.seq_len)
  if m.kind == 'pmi' and not m.pmi_vocab:
    m.pmi_vocab = pmi_vocab
  return c


def _common_masking(config):
  """`config` with the masking every variant is evaluated under, and no SBO head."""
  c = config_lib.ConfigDict(config.to_dict())
  c.data.masking.update(COMMON_MASKING)
  c.data.masking.max_predictions = masking.predictions_for(COMMON_MASKING['rate'],
                                                           c.data.seq_len)
  c.model.sbo = False
  return c


def has_common_masking(config) -> bool:
  """Whether the config's own masking is the common one (its own figure then is the
  common figure)."""
  keys = (*COMMON_MASKING, 'max_predictions')
  common = _common_masking(config).data.masking
  return not config.model.sbo and all(config.data.masking[k] == common[k] for k in keys)


def downstream_tasks(config) -> list[tuple[str, object]]:
  """(name, fine-tuning config) of each downstream task, `downstream` first."""
  first = config.get('downstream_name') or config.downstream.task.kind
  more = dict(config.more_downstream) if 'more_downstream' in config else {}
  return [(first, config.downstream), *more.items()]


def downstream_config(task, init: str, seed: int):
  c = config_lib.ConfigDict(task.to_dict())
  c.init, c.seed = init, seed
  return c.lock()


def shared_tokenizer(config, workdir: str) -> str:
  """One tokenizer for every variant (trained once on the shared corpus), so the
  variants differ in masking only."""
  directory = _join(workdir, workdir_lib.TOKENIZER)
  if tokenizer_lib.find(directory) is None:
    from bertjax.data import corpus
    data = config.pretrain.data
    from bertjax.data import splits
    seed = config.pretrain.seed
    documents = corpus.load_documents(data.corpus, num_embedded=data.embedded_documents,
                                      seed=seed, doc_mode=data.doc_mode)
    # Trained on the training split only, as each run's own tokenizer would be.
    train, _ = splits.split_indices(len(documents), data.eval_fraction, seed)
    pipeline.load_or_train_tokenizer(data, [documents[i] for i in train], workdir, seed=seed)
  return directory


def held_out_mlm_accuracy(config, workdir: str) -> float:
  """MLM accuracy of `workdir`'s weights on the held-out split under the common
  masking (COMMON_MASKING: same rows, same seed, same rate, split and
  max_predictions for every variant, so the figures compare)."""
  c = _common_masking(config)
  data = pipeline.build(c.data, batch_size=c.train.batch_size, eval_batches=c.train.eval_batches,
                        seed=c.seed, workdir=workdir)
  model_cfg = config_lib.model_config(c, data.tokenizer.vocab_size)
  mesh, rules = sharding.make_mesh(c.mesh), sharding.rules_from_config(c.mesh)
  fns = steps.build(model_cfg, c.optim, mesh, rules, **config_lib.step_settings(c))
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


def _pretrain_seeds(config) -> tuple[int, ...]:
  return tuple(config.pretrain_seeds) if 'pretrain_seeds' in config else (config.pretrain.seed,)


def _join(directory: str, *names: str) -> str:
  """`directory/names...` as a string: a URL stays a URL, a local path is absolute."""
  return os.fspath(storage.as_path(directory).joinpath(*names))


def _copy_tokenizer(src: str, dst: str) -> None:
  """Copies the shared tokenizer directory to `dst` (either may be a URL); the model
  file last, so a cut-off copy is not taken for a tokenizer (tokenizer.find looks for it)."""
  storage.upload_tree(storage.local_copy(src), dst, last=('vocab.txt', 'spm.model'))


def _pretrained(pre, pre_dir: str, tokenizer_dir: str):
  """Pre-trains (or resumes) one model; returns (own, common) held-out MLM accuracy,
  or None when preempted."""
  if tokenizer_lib.find(_join(pre_dir, workdir_lib.TOKENIZER)) is None:
    _copy_tokenizer(tokenizer_dir, _join(pre_dir, workdir_lib.TOKENIZER))
  own = train.train_and_evaluate(pre, pre_dir)
  if not own:  # preempted: the checkpoint is saved, the sweep resumes from it
    return None
  common = (own['mlm_accuracy'] if has_common_masking(pre)
            else held_out_mlm_accuracy(pre, pre_dir))
  writer = reporting.MetricsWriter(pre_dir)
  writer.write(pre.train.steps, dict(mlm_accuracy_token_masking=common,
                                     mlm_accuracy_own_masking=own['mlm_accuracy']),
               prefix='compare_')
  writer.close()
  return own['mlm_accuracy'], common


def _pretrain_dirs(config, workdir: str) -> list[tuple[int, str, str]]:
  """(pre-training seed, directory suffix, directory) of each pre-trained model; the
  first keeps the old layout."""
  return [(seed, '' if k == 0 else f'_seed{seed}',
           _join(workdir, 'pretrain' + ('' if k == 0 else f'_seed{seed}')))
          for k, seed in enumerate(_pretrain_seeds(config))]


def _downstream(config, name: str, workdir: str, tasks) -> tuple[dict, dict] | None:
  """Fine-tunes every pre-trained model of the variant on `tasks` over the downstream
  seeds; ({task: metric name}, {task: values, pre-training seed first}), or None
  when preempted."""
  metrics, values = {}, {}
  for task_name, task in tasks:
    metrics[task_name], values[task_name] = task.task.metric, []
    first = task_name == downstream_tasks(config)[0][0]  # keeps the one-task layout
    for pre_seed, suffix, pre_dir in _pretrain_dirs(config, workdir):
      for seed in config.downstream_seeds:
        reporting.log(f'{name}: fine-tuning on {task_name}, seed {seed}'
                      + (f' (pre-training seed {pre_seed})' if suffix else ''))
        ft = downstream_config(task, pre_dir, seed)
        ft_dir = _join(workdir, f'downstream{"" if first else "_" + task_name}'
                       f'{suffix}_{seed}')
        got = finetune.finetune_and_evaluate(ft, ft_dir)
        if not got:
          return None
        values[task_name].append(got[ft.task.metric])
  return metrics, values


def run_variant(config, name: str, workdir: str, tokenizer_dir: str, config_spec: str,
                pmi_vocab: str = ''):
  """Pre-trains the variant once per pre-training seed and fine-tunes each model on
  every downstream task over the downstream seeds."""
  base = variant_config(config, name, pmi_vocab)
  accuracies = []
  for pre_seed, _, pre_dir in _pretrain_dirs(config, workdir):
    pre = config_lib.apply_overrides(base, [f'seed={pre_seed}'])
    got = _pretrained(pre, pre_dir, tokenizer_dir)
    if got is None:
      return None
    accuracies.append(got)
  downstream = _downstream(config, name, workdir, downstream_tasks(config))
  if downstream is None:
    return None
  first_dir = _pretrain_dirs(config, workdir)[0][2]
  metrics_log = _join(first_dir, 'metrics.jsonl')  # read_metrics also finds gs:// segments
  seconds, tokens_per_sec = _training_figures(metrics_log)
  own, common = (float(np.mean(v)) for v in zip(*accuracies))
  return VariantResult(
      name=name, config_path=config_spec, config_hash=config_lib.config_hash(base),
      mlm_accuracy_token=common, mlm_accuracy_own=own, downstream_metrics=downstream[0],
      downstream=downstream[1], tokens_per_sec=tokens_per_sec, wall_seconds=seconds,
      steps=base.train.steps, tokens=base.train.steps * base.train.batch_size * base.data.seq_len,
      loss_curve=loss_curve_from_metrics(metrics_log),
      pretrain_seeds=len(accuracies))


def _read_back(config, name: str, workdir: str, path: str) -> VariantResult | None:
  """A finished variant's result, with the downstream tasks added to the config since
  it was written fine-tuned now (result.json then keeps the old tasks' values too);
  only the configured tasks reach the report. None when preempted."""
  tasks = downstream_tasks(config)
  result = VariantResult.from_json(json.loads(storage.as_path(path).read_text()), tasks[0][0])
  missing = [(t, task) for t, task in tasks if t not in result.downstream]
  if missing:
    reporting.log(f'{name}: done before; fine-tuning the tasks added since: '
                  + ', '.join(t for t, _ in missing))
    got = _downstream(config, name, workdir, missing)
    if got is None:
      return None
    result.downstream_metrics.update(got[0])
    result.downstream.update(got[1])
    _write_result(result, path)
  names = [t for t, _ in tasks]
  return dataclasses.replace(
      result, downstream={t: result.downstream[t] for t in names},
      downstream_metrics={t: result.downstream_metrics[t] for t in names})


def _write_result(result: VariantResult, path: str) -> None:
  storage.write_atomic(path, json.dumps(dataclasses.asdict(result), indent=1))


def shared_pmi_vocab(config, workdir: str, tokenizer_dir: str) -> str:
  """WORKDIR/pmi_vocab.json, built once from the training documents with the shared
  tokenizer, for pmi variants that name no vocabulary of their own."""
  path = _join(workdir, PMI_VOCAB)
  if not storage.as_path(path).is_file():
    from bertjax.data import corpus
    from bertjax.data.splits import split_indices
    data = config.pretrain.data
    tok = tokenizer_lib.load(tokenizer_dir)
    documents = corpus.load_documents(data.corpus, num_embedded=data.embedded_documents,
                                      seed=config.pretrain.seed, doc_mode=data.doc_mode)
    train_rows, _ = split_indices(len(documents), data.eval_fraction, config.pretrain.seed)
    sentences = (tok.encode(s) for i in train_rows for s in documents[i])
    ngrams = pmi.build(sentences, tok, min_count=config.pmi_min_count, size=config.pmi_size)
    pmi.save(path, ngrams, tok, min_count=config.pmi_min_count, max_n=pmi.MAX_N,
             corpus=str(data.corpus))
    reporting.log(f'PMI vocabulary: {len(ngrams)} n-grams in {path}')
  return path


def run(config, workdir: str, config_spec: str) -> list[VariantResult]:
  """Runs (or resumes) the sweep and writes WORKDIR/report.md, report.csv and plots."""
  validate(config)
  # A missing bucket or no credentials: one line now, before any work.
  workdir = os.fspath(workdir_lib.create(workdir))
  storage.write_atomic(_join(workdir, workdir_lib.CONFIG), config_lib.to_json(config))
  # The variants' steps compile to the same programs (only the data differs): a
  # persistent compilation cache compiles each once for the whole sweep. On local
  # disk: JAX would read and write every cache entry over the network otherwise.
  cache = (compilation_cache.default_dir() if storage.is_url(workdir)
           else _join(workdir, 'compilation_cache'))
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  tokenizer_dir = shared_tokenizer(config, workdir)
  pmi_vocab = ''
  if any(variant_config(config, v).data.masking.kind == 'pmi'
         and not variant_config(config, v).data.masking.pmi_vocab for v in config.variants):
    pmi_vocab = shared_pmi_vocab(config, workdir, tokenizer_dir)
  results = []
  for i, kind in enumerate(config.variants):
    variant_dir = _join(workdir, kind)
    result_path = _join(variant_dir, RESULT_FILE)
    if storage.as_path(result_path).is_file():
      reporting.log(f'variant {i + 1}/{len(config.variants)} {kind}: done before, read back')
      result = _read_back(config, kind, variant_dir, result_path)
    else:
      reporting.log(f'variant {i + 1}/{len(config.variants)}: {kind}')
      result = run_variant(config, kind, variant_dir, tokenizer_dir, config_spec, pmi_vocab)
      if result is not None:
        _write_result(result, result_path)
    if result is None:
      reporting.log('preempted: re-run the same command to resume the sweep')
      return results
    results.append(result)
  paths = write_report(results, workdir, title=config.title, notes=list(config.notes))
  print(format_table(results))
  reporting.log(f'report: {paths["markdown"]} (table), {paths["csv"]}, plots '
                + ', '.join(paths['plots']))
  return results
