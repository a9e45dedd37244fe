"""`bertjax bench data`: host-side input throughput, per masking kind, on one core.

  bertjax bench data --corpus PREPARED_DIR [--seq_len 128] [--batch 256] [--json]

Times the pipeline's own per-batch work on a corpus from `bertjax data prepare`:
gather a global batch of instances (read from the corpus's stored array_record
instances when they were built with these settings, else built in memory first,
untimed), mask it (`pipeline.train_batches`, the dataset a run iterates), and put it
on the device. Batches are drawn one after another in the calling thread, with the
process pinned to one core (`os.sched_setaffinity`), so the figure is per core: a run
with `data.workers` processes has about that many times as much. The masking kinds
are those `data/masking.py` knows; `pmi` masks with a PMI vocabulary built from the
corpus's training split first (untimed, `bertjax data pmi`'s defaults). Each kind is
measured without and with packing; tokens/s counts every position of the batch (what
the device consumes) per second of wall time, real tokens/s the non-padding ones, and
the padding share is the rest. Tokens per CPU-second of this process is given too: on
a machine shared with other work, wall time counts the waits for the core, CPU time
does not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time

import jax
import numpy as np
from bertjax import config_lib
from bertjax.data import instance_store, instances, masking, pipeline, pmi, prepared
from bertjax.errors import UserError

# Issue 16's targets, tokens/s on one core; kinds without one are measured only.
TARGETS = dict(token=1_000_000, span=500_000, pmi=500_000)


@contextlib.contextmanager
def one_core():
  """Pins this process (all its threads) to one of the cores it may use."""
  allowed = os.sched_getaffinity(0)
  core = min(allowed)
  os.sched_setaffinity(0, {core})
  try:
    yield core
  finally:
    os.sched_setaffinity(0, allowed)


def data_config(corpus: str, *, kind: str, seq_len: int, packing: bool, rate: float = 0.15):
  data = config_lib.pretrain_defaults(model='tiny').data
  data.corpus, data.seq_len, data.packing = corpus, seq_len, packing
  data.masking.kind, data.masking.rate = kind, rate
  data.masking.max_predictions = max(1, round(seq_len * rate))
  return data


def _rows(data_cfg, workdir: str):
  """(tokenizer, training rows, where they come from) for the settings of `data_cfg`."""
  settings = instances.InstanceSettings.from_data_config(data_cfg)
  stored = prepared.stored_instances(data_cfg.corpus, dataclasses.asdict(settings))
  tok = prepared.prepared_tokenizer(data_cfg.corpus)
  if stored is not None:
    return tok, stored[0], 'stored instances (array_record)'
  documents = [[s.tolist() for s in doc] for doc in prepared.load_prepared(data_cfg.corpus)]
  table = instances.make_table(documents, tok, settings, 0)
  return tok, instance_store.InMemoryInstances(table), 'instances built in memory'


def _pmi_vocab(corpus: str, tok, workdir: str) -> str:
  """A PMI vocabulary of the corpus's training split, as `bertjax data pmi` builds it
  by default."""
  sentences = (s.tolist() for d in prepared.load_prepared(corpus, 'train', tok) for s in d)
  path = os.path.join(workdir, 'pmi.json')
  ngrams = pmi.build(sentences, tok, min_count=pmi.DEFAULT_MIN_COUNT, size=pmi.DEFAULT_SIZE)
  pmi.save(path, ngrams, tok, min_count=pmi.DEFAULT_MIN_COUNT, max_n=pmi.MAX_N, corpus=corpus)
  return path


def _time_batches(rows, tok, data_cfg, *, batch: int, batches: int) -> dict:
  dataset = pipeline.train_batches(rows, tok, data_cfg.masking, seed=0, batch_size=batch,
                                   dupe_factor=0)
  jax.block_until_ready(jax.device_put(dataset[0]))  # warm-up: first reads, allocations
  real = 0
  start, cpu_start = time.perf_counter(), time.process_time()
  for i in range(1, batches + 1):
    host = dataset[i]
    real += int(np.count_nonzero(host['attention_mask']))
    jax.block_until_ready(jax.device_put(host))
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  positions = batches * batch * data_cfg.seq_len
  return dict(tokens_per_second=positions / seconds, real_tokens_per_second=real / seconds,
              tokens_per_cpu_second=positions / max(cpu_seconds, 1e-9),
              padding_share=1 - real / positions, seconds=seconds, cpu_seconds=cpu_seconds)


def measure(corpus: str, *, kinds=None, seq_len: int = 128, batch: int = 256,
            batches: int = 20) -> list[dict]:
  if not prepared.is_prepared(corpus):
    raise UserError(f'{corpus} is not a prepared corpus; make one with `bertjax data prepare '
                    '--corpus TEXT --tokenizer TOK --out DIR --seq_len 128`')
  kinds = list(kinds or masking.KINDS)
  unknown = [k for k in kinds if k not in masking.KINDS]
  if unknown:
    raise UserError(f'--kinds: unknown masking kind(s) {unknown}; data/masking.py knows '
                    f'{", ".join(masking.KINDS)}')
  results = []
  with tempfile.TemporaryDirectory() as workdir, one_core() as core:
    sources = {packing: _rows(data_config(corpus, kind=kinds[0], seq_len=seq_len,
                                          packing=packing), workdir)
               for packing in (False, True)}
    pmi_vocab = None  # built once, when a kind needs it
    for kind in kinds:
      row = dict(kind=kind, core=core, seq_len=seq_len, batch=batch, batches=batches,
                 target=TARGETS.get(kind))
      for packing, (tok, rows, source) in sources.items():
        if len(rows) < batch:
          raise UserError(f'{corpus} yields {len(rows)} training sequences of {seq_len}, fewer '
                          f'than one batch of {batch}; lower --batch or prepare more text')
        cfg = data_config(corpus, kind=kind, seq_len=seq_len, packing=packing)
        if kind == 'pmi':
          if pmi_vocab is None:
            pmi_vocab = _pmi_vocab(corpus, tok, workdir)
          cfg.masking.pmi_vocab = pmi_vocab
        try:
          figures = _time_batches(rows, tok, cfg, batch=batch, batches=batches)
        except UserError as e:  # a kind that needs more than the corpus has
          figures = dict(not_measured=str(e))
        figures['rows_from'] = source
        if packing:
          row['packed'] = figures
        else:
          row.update(figures)
      results.append(row)
  return results


def _rate(figures: dict, key: str = 'tokens_per_second') -> str:
  return f'{figures[key]:,.0f}' if key in figures else 'not measured'


def format_table(results: list[dict]) -> str:
  first = results[0]
  lines = [f'{first["batch"]} x {first["seq_len"]} batches, {first["batches"]} timed per kind, '
           f'one core (core {first["core"]}); unpacked rows from {first["rows_from"]}, '
           f'packed from {first["packed"]["rows_from"]}', '',
           '| kind | tokens/s | tokens/CPU-s | real tokens/s | padding | packed: tokens/s '
           '| real tokens/s | padding | target (tokens/s) |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |']
  for r in results:
    p = r['packed']
    target = '-'
    if r['target'] and 'tokens_per_second' in r:
      met = r['tokens_per_second'] >= r['target']
      target = f'>= {r["target"]:,}: {"met" if met else "**missed**"}'
    share = lambda f: f'{100 * f["padding_share"]:.1f}%' if 'padding_share' in f else '-'
    lines.append(f'| {r["kind"]} | {_rate(r)} | {_rate(r, "tokens_per_cpu_second")} | '
                 f'{_rate(r, "real_tokens_per_second")} | '
                 f'{share(r)} | {_rate(p)} | {_rate(p, "real_tokens_per_second")} | '
                 f'{share(p)} | {target} |')
  return '\n'.join(lines)


def run(corpus: str, *, kinds: str | None, seq_len: int, batch: int, batches: int,
        as_json: bool) -> list[dict]:
  results = measure(corpus, kinds=kinds.split(',') if kinds else None, seq_len=seq_len,
                    batch=batch, batches=batches)
  if as_json:
    for row in results:
      print(json.dumps(row))
  else:
    print(format_table(results))
  return results
