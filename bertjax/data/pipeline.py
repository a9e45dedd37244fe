"""The pre-training input pipeline: corpus -> tokenizer -> instances -> masked batches.

The order is grain's: the instances shuffled per epoch from the seed and repeated;
global batch b holds positions b * batch_size ... (b + 1) * batch_size - 1 of it. The
order is random access (instance_order.py), so each process looks up only its own
rows' positions (its input work is its own share, whatever the process count), then
reads and masks them with RNGs derived from (seed, batch index, row), so masks are
fresh every epoch (dynamic masking) and a restored iterator replays exactly the
batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time

import grain
import jax
import numpy as np

from bertjax.data import (corpus, derived_tokenizer, instance_order as instance_order_lib,
                          instance_store, instances, masking, philox_rows, pmi, prepared,
                          tokenizer as tokenizer_lib)
from bertjax.data.splits import split_indices
from bertjax.errors import UserError


@dataclasses.dataclass
class PretrainData:
  tokenizer: tokenizer_lib.Tokenizer
  train: grain.MapDataset  # yields this process's share of each global batch
  eval_batches: list[dict[str, np.ndarray]]
  num_train_instances: int
  most_frequent_token: int  # the majority-class baseline for MLM accuracy


def load_or_train_tokenizer(data_cfg, documents, workdir: str, *, seed: int):
  """The workdir's tokenizer, else one trained on `documents` (see derived_tokenizer.py
  for the record kept beside it and the check a later run makes)."""
  def train(directory: str):
    tokenizer_lib.train_sentencepiece(
        (s for doc in documents for s in doc), os.path.join(directory, 'spm.model'),
        vocab_size=data_cfg.tokenizer.vocab_size, model_type=data_cfg.tokenizer.model_type)

  cannot_train = None
  if data_cfg.tokenizer.kind != 'sentencepiece':
    cannot_train = (f'tokenizer kind {data_cfg.tokenizer.kind!r} cannot be trained; use '
                    '"sentencepiece" or import a WordPiece model with `bertjax import`')
  return derived_tokenizer.ensure(
      os.path.join(workdir, 'tokenizer'), derived_tokenizer.trained_from(data_cfg, seed),
      started=derived_tokenizer.training_started(workdir), make=train,
      cannot_make=cannot_train)


def _split_documents(documents, eval_fraction: float, seed: int):
  train, held_out = split_indices(len(documents), eval_fraction, seed)
  return [documents[i] for i in train], [documents[i] for i in held_out]


def _prepared_tokenizer(corpus_dir: str, workdir: str):
  """A prepared corpus fixes the tokenizer: the workdir holds a copy of it."""
  stored = prepared.read_manifest(corpus_dir)['tokenizer']['fingerprint']
  tok = derived_tokenizer.ensure(
      os.path.join(workdir, 'tokenizer'), derived_tokenizer.copied_from(corpus_dir, stored),
      started=derived_tokenizer.training_started(workdir),
      make=lambda directory: tokenizer_lib.save(prepared.prepared_tokenizer(corpus_dir),
                                                directory))
  prepared.check_tokenizer(corpus_dir, tok)
  return tok


def _token_documents(data_cfg, seed: int, workdir: str):
  """(tokenizer, train documents, eval documents) as lists of sentences of ids.

  A directory made by `bertjax data prepare` is already tokenized (and split, if it
  was asked to hold documents out); text is split here and tokenized once per run.
  """
  corpus_spec = data_cfg.corpus
  if prepared.is_prepared(corpus_spec):
    tok = _prepared_tokenizer(corpus_spec, workdir)
    as_lists = lambda docs: [[s.tolist() for s in doc] for doc in docs]
    documents = as_lists(prepared.load_prepared(corpus_spec, 'train'))
    if 'eval' in prepared.read_manifest(corpus_spec)['splits']:
      return tok, documents, as_lists(prepared.load_prepared(corpus_spec, 'eval'))
    train_docs, eval_docs = _split_documents(documents, data_cfg.eval_fraction, seed)
    return tok, train_docs, eval_docs
  documents = corpus.load_documents(corpus_spec, num_embedded=data_cfg.embedded_documents,
                                    seed=seed, doc_mode=data_cfg.doc_mode)
  train_docs, eval_docs = _split_documents(documents, data_cfg.eval_fraction, seed)
  tok = load_or_train_tokenizer(data_cfg, train_docs, workdir, seed=seed)
  return tok, instances.tokenize(train_docs, tok), instances.tokenize(eval_docs, tok)


EVAL_STREAM = 2**64 - 1  # the batch index the held-out masks are drawn under
STATIC_STREAM = 2**63  # static masks: copy c is drawn under STATIC_STREAM + c


def instance_order(num_instances: int, seed: int) -> instance_order_lib.InstanceOrder:
  """Training position -> instance index: a fresh permutation of the instances each
  epoch, repeated forever, `range(n).shuffle(seed).repeat(None)` as grain orders it;
  any positions are looked up without the rest."""
  return instance_order_lib.InstanceOrder(num_instances, seed)


class HostIndices(grain.transforms.Map):
  """Global batch index -> the instance indices of this process's rows of that batch.

  Row i of the process's share sits at global position
  batch * global_batch + first_row + i of `order`; only those local_batch positions
  are looked up, so no host builds the whole global batch.
  """

  def __init__(self, order, *, global_batch: int, local_batch: int, first_row: int):
    self.order, self.global_batch = order, global_batch
    self.local_batch, self.first_row = local_batch, first_row

  def map(self, batch_index: int) -> np.ndarray:
    start = batch_index * self.global_batch + self.first_row
    return self.order[np.arange(start, start + self.local_batch)]


class ProcessRows(grain.transforms.MapWithIndex):
  """(global batch index, this process's instance indices) -> its rows, read and masked.

  Dynamic masking (dupe_factor 0): each row's RNG is seeded by (seed, global batch,
  row), a fresh mask every time. Static masking (dupe_factor k, BERT's original):
  seeded by (seed, copy, instance) with copy = epoch mod k, so each instance has k
  fixed masks. Either way the global batch is the same whether 1 or 64 processes
  assemble it, and a resumed run draws the same masks.
  """

  def __init__(self, table, tok, masking_cfg, *, seed: int, local_batch: int,
               global_batch: int, dupe_factor: int):
    self.table, self.tok, self.cfg, self.seed = table, tok, masking_cfg, seed
    self.first_row = jax.process_index() * local_batch
    self.local_batch, self.global_batch = local_batch, global_batch
    self.dupe_factor = dupe_factor
    self.num_instances = len(table)

  def map_with_index(self, batch_index: int, indices):
    rows = np.arange(self.first_row, self.first_row + self.local_batch)
    batch = self.table.rows(indices)
    if self.dupe_factor:
      epochs = (batch_index * self.global_batch + rows) // self.num_instances
      keys = [row_key(self.seed, STATIC_STREAM + int(e) % self.dupe_factor, i)
              for e, i in zip(epochs.tolist(), np.asarray(indices).tolist())]
    else:
      keys = [row_key(self.seed, batch_index, r) for r in rows.tolist()]
    return mask_rows(batch, self.tok, self.cfg, philox_rows.PhiloxRows(keys))


def train_batches(rows, tok, masking_cfg, *, seed: int, batch_size: int,
                  dupe_factor: int) -> grain.MapDataset:
  """This process's share of every global batch of `batch_size`, masked.

  As many batches as `.batch(batch_size)` of the repeated order made (its length),
  so iterator states saved by runs that built whole global batches still restore.
  """
  local_batch = batch_size // jax.process_count()
  first_row = jax.process_index() * local_batch
  order = instance_order(len(rows), seed)
  return (grain.MapDataset.range(sys.maxsize // batch_size)
          .map(HostIndices(order, global_batch=batch_size, local_batch=local_batch,
                           first_row=first_row))
          .map_with_index(ProcessRows(rows, tok, masking_cfg, seed=seed,
                                      local_batch=local_batch, global_batch=batch_size,
                                      dupe_factor=dupe_factor)))


def row_key(seed: int, batch_index: int, row: int) -> int:
  """The Philox key of row `row`'s stream in batch `batch_index`: an independent
  stream per (seed, batch, row), `np.random.Generator(np.random.Philox(key=...))`,
  drawn for a whole batch at once by philox_rows.PhiloxRows."""
  return (int(seed) % 2**32) << 96 | (int(batch_index) % 2**64) << 32 | int(row) % 2**32


def mask_rows(batch, tok, masking_cfg, rng: philox_rows.PhiloxRows):
  """Masks the batch, each row with its own stream of `rng`; adds mlm_positions/
  targets/weights, and for span masking the span-boundary targets of SpanBERT's SBO: sbo_left,
  sbo_right (the unmasked positions around each prediction's span) and sbo_offset
  (its 0-based place in the span), (B, P) like the MLM keys."""
  ids = batch['input_ids']
  ngram_vocab = None
  if masking_cfg.kind == 'pmi':
    ngram_vocab = pmi.load(masking_cfg.pmi_vocab, tok)
  masked = masking.mask(ids, tok.word_start_V[ids], tok.special_V[ids],
                        kind=masking_cfg.kind, rate=masking_cfg.rate,
                        max_predictions=masking_cfg.max_predictions,
                        rng=rng, vocab_size=tok.vocab_size,
                        mask_id=tok.mask_id, random_ids=np.flatnonzero(~tok.special_V),
                        mask_prob=masking_cfg.mask_prob, random_prob=masking_cfg.random_prob,
                        ngram_vocab=ngram_vocab)
  out = dict(batch, input_ids=masked['input_ids'], mlm_positions=masked['positions'],
             mlm_targets=masked['targets'], mlm_weights=masked['weights'])
  if 'span_left' in masked:
    out.update(sbo_left=masked['span_left'], sbo_right=masked['span_right'],
               sbo_offset=masked['span_offset'])
  return out


def _instances(data_cfg, seed: int, workdir: str):
  """(tokenizer, train rows, eval rows, most frequent training token).

  A prepared corpus whose stored instances were built with this run's data settings
  is read row by row from disk; anything else is built here, in memory.
  """
  settings = instances.InstanceSettings.from_data_config(data_cfg)
  if prepared.is_prepared(data_cfg.corpus):
    stored = prepared.stored_instances(data_cfg.corpus, dataclasses.asdict(settings))
    if stored is not None:
      return (_prepared_tokenizer(data_cfg.corpus, workdir), *stored)
  tok, train_docs, eval_docs = _token_documents(data_cfg, seed, workdir)
  train_table = instances.make_table(train_docs, tok, settings, seed)
  eval_table = instances.make_table(eval_docs, tok, settings, seed + 1)
  return (tok, instance_store.InMemoryInstances(train_table),
          instance_store.InMemoryInstances(eval_table),
          instances.most_frequent_token(train_table, tok))


def train_iterator(data: PretrainData, workers: int):
  """The checkpointable iterator over this process's batches; with `workers`, batches
  are gathered and masked in that many processes (same batches, same order)."""
  dataset = data.train.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))
  if workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; bertjax uses none
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                                  worker_init_fn=_worker_init)
  return iter(dataset)


def _worker_init(worker_index: int, worker_count: int) -> None:
  """A grain worker leaves the first Ctrl-C to its parent and ends with it.

  Ctrl-C reaches the whole process group. The parent saves the position it has
  consumed to, then closes the workers; a worker that died of it would print a
  traceback and could fail the batch the parent still waits for. A second Ctrl-C ends
  the worker at once, as it ends the parent; but two Ctrl-Cs that arrive before the
  worker's handler runs count as one, so a worker also exits when its parent is gone
  (it would otherwise live on, holding the parent's stdout open)."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, lambda *_: signal.signal(signal.SIGINT, signal.SIG_DFL))
  parent = os.getppid()

  def exit_when_orphaned():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)
  threading.Thread(target=exit_when_orphaned, daemon=True).start()


def build(data_cfg, *, batch_size: int, eval_batches: int, seed: int,
          workdir: str) -> PretrainData:
  """The pipeline for `data_cfg` (a config's `data`): global batches of `batch_size`
  (`train.batch_size`), at most `eval_batches` (`train.eval_batches`) held-out
  batches, everything drawn from `seed`; the tokenizer lives in WORKDIR/tokenizer."""
  tok, train_rows, eval_rows, most_frequent = _instances(data_cfg, seed, workdir)
  num_train = len(train_rows)

  if batch_size % jax.process_count():
    raise UserError(f'train.batch_size {batch_size} is not divisible by the '
                    f'{jax.process_count()} processes')
  local_batch = batch_size // jax.process_count()
  if num_train < batch_size:
    raise UserError(f'the corpus yields {num_train} training sequences, fewer than one '
                    f'batch of {batch_size}; lower --config.train.batch_size or add text')

  train = train_batches(train_rows, tok, data_cfg.masking, seed=seed, batch_size=batch_size,
                        dupe_factor=data_cfg.masking.dupe_factor)

  # One fixed mask (own seed per row) for every evaluation, so evals compare.
  n_eval = len(eval_rows)
  num_eval_batches = min(n_eval // batch_size, eval_batches)
  if not num_eval_batches:
    raise UserError(f'the held-out split has {n_eval} sequences, fewer than one batch of '
                    f'{batch_size}; raise --config.data.eval_fraction or add text')
  eval_batches = []
  for b in range(num_eval_batches):
    rows = b * batch_size + jax.process_index() * local_batch + np.arange(local_batch)
    rng = philox_rows.PhiloxRows([row_key(seed, EVAL_STREAM, r) for r in rows.tolist()])
    eval_batches.append(mask_rows(eval_rows.rows(rows), tok, data_cfg.masking, rng))
  return PretrainData(tok, train, eval_batches, num_train, most_frequent)
