"""The pre-training input pipeline: corpus -> tokenizer -> instances -> masked batches.

grain does the ordering: each process takes its own slice of the instances, shuffles
it per epoch from the seed, batches, and masks each batch with an RNG derived from
(seed, batch index), so masks are fresh every epoch (dynamic masking) and a restored
iterator replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import os
import random

import grain
import jax
import numpy as np

from bertjax.data import (corpus, instance_store, instances, masking, prepare,
                          tokenizer as tokenizer_lib)
from bertjax.errors import UserError


@dataclasses.dataclass
class PretrainData:
  tokenizer: tokenizer_lib.Tokenizer
  train: grain.MapDataset  # yields this process's share of each global batch
  eval_batches: list[dict[str, np.ndarray]]
  num_train_instances: int
  most_frequent_token: int  # the majority-class baseline for MLM accuracy


def load_or_train_tokenizer(data_cfg, documents, workdir: str):
  """The workdir's tokenizer (trained or imported), else one trained on `documents`."""
  existing = tokenizer_lib.find(os.path.join(workdir, 'tokenizer'))
  if existing is not None:
    return existing
  path = os.path.join(workdir, 'tokenizer', 'spm.model')
  if data_cfg.tokenizer.kind != 'sentencepiece':
    raise UserError(f'tokenizer kind {data_cfg.tokenizer.kind!r} cannot be trained; use '
                    '"sentencepiece" or import a WordPiece model with `bertjax import`')
  if jax.process_index() == 0:
    tokenizer_lib.train_sentencepiece(
        (s for doc in documents for s in doc), path,
        vocab_size=data_cfg.tokenizer.vocab_size, model_type=data_cfg.tokenizer.model_type)
  _sync('tokenizer')
  return tokenizer_lib.SentencePieceTokenizer(path)


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _split_documents(documents, eval_fraction: float, seed: int):
  order = list(range(len(documents)))
  random.Random(seed).shuffle(order)
  n_eval = max(1, int(len(documents) * eval_fraction))
  if len(documents) - n_eval < 1:
    raise UserError(f'the corpus has {len(documents)} document(s); it needs at least two '
                    'to hold one out for evaluation')
  return [documents[i] for i in order[n_eval:]], [documents[i] for i in order[:n_eval]]


def _prepared_tokenizer(prepared: str, workdir: str):
  """A prepared corpus fixes the tokenizer: copy it into the workdir, then load it."""
  dest = os.path.join(workdir, 'tokenizer')
  if tokenizer_lib.find(dest) is None and jax.process_index() == 0:
    tokenizer_lib.save(prepare.prepared_tokenizer(prepared), dest)
  _sync('tokenizer')
  return tokenizer_lib.load(dest)


def _token_documents(config, workdir: str):
  """(tokenizer, train documents, eval documents) as lists of sentences of ids.

  A directory made by `bertjax data prepare` is already tokenized (and split); text
  is split here and tokenized once per run.
  """
  data_cfg = config.data
  if prepare.is_prepared(data_cfg.corpus):
    tok = _prepared_tokenizer(data_cfg.corpus, workdir)
    as_lists = lambda docs: [[s.tolist() for s in doc] for doc in docs]
    documents = as_lists(prepare.load_prepared(data_cfg.corpus, 'train', tok))
    if 'eval' in prepare.read_manifest(data_cfg.corpus)['splits']:
      return tok, documents, as_lists(prepare.load_prepared(data_cfg.corpus, 'eval', tok))
    train_docs, eval_docs = _split_documents(documents, data_cfg.eval_fraction, config.seed)
    return tok, train_docs, eval_docs
  documents = corpus.load_documents(data_cfg.corpus, num_embedded=data_cfg.embedded_documents,
                                    seed=config.seed, doc_mode=data_cfg.doc_mode)
  train_docs, eval_docs = _split_documents(documents, data_cfg.eval_fraction, config.seed)
  tok = load_or_train_tokenizer(data_cfg, train_docs, workdir)
  return tok, instances.tokenize(train_docs, tok), instances.tokenize(eval_docs, tok)


EVAL_STREAM = 2**64 - 1  # the batch index the held-out masks are drawn under
STATIC_STREAM = 2**63  # static masks: copy c is drawn under STATIC_STREAM + c


class ProcessRows(grain.transforms.MapWithIndex):
  """Global batch of instance indices -> this process's rows, gathered and masked.

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
    batch = self.table.rows(indices[rows])
    if self.dupe_factor:
      epochs = (batch_index * self.global_batch + rows) // self.num_instances
      rngs = [row_generator(self.seed, STATIC_STREAM + int(e) % self.dupe_factor, i)
              for e, i in zip(epochs, indices[rows])]
    else:
      rngs = [row_generator(self.seed, batch_index, r) for r in rows]
    return mask_rows(batch, self.tok, self.cfg, rngs)


def row_generator(seed: int, batch_index: int, row: int) -> np.random.Generator:
  """An independent stream per (seed, batch, row): Philox keyed by the three (cheap
  to create, unlike a seeded PCG64, which matters at hundreds of rows a batch)."""
  return np.random.Generator(np.random.Philox(
      key=(int(seed) % 2**32) << 96 | (int(batch_index) % 2**64) << 32 | int(row) % 2**32))


def mask_rows(batch, tok, masking_cfg, rngs):
  """Masks the batch, each row with its own RNG; adds mlm_positions/targets/weights.

  (Span masking's span-boundary targets are not passed on: no SBO head uses them yet.)"""
  ids = batch['input_ids']
  masked = masking.mask(ids, tok.word_start_V[ids], tok.special_V[ids],
                        kind=masking_cfg.kind, rate=masking_cfg.rate,
                        max_predictions=masking_cfg.max_predictions,
                        rng=masking.RowGenerators(rngs), vocab_size=tok.vocab_size,
                        mask_id=tok.mask_id, random_ids=np.flatnonzero(~tok.special_V))
  return dict(batch, input_ids=masked['input_ids'], mlm_positions=masked['positions'],
              mlm_targets=masked['targets'], mlm_weights=masked['weights'])


def _instances(config, workdir: str):
  """(tokenizer, train rows, eval rows, most frequent training token).

  A prepared corpus whose stored instances were built with this run's data settings
  is read row by row from disk; anything else is built here, in memory.
  """
  data_cfg = config.data
  if prepare.is_prepared(data_cfg.corpus):
    stored = prepare.read_manifest(data_cfg.corpus).get('instances')
    wanted = dict(seq_len=data_cfg.seq_len, short_seq_prob=data_cfg.short_seq_prob,
                  sentence_objective=data_cfg.sentence_objective, packing=data_cfg.packing)
    if stored and stored['settings'] == wanted and 'eval' in stored['splits']:
      tok = _prepared_tokenizer(data_cfg.corpus, workdir)
      directory = os.path.join(data_cfg.corpus, 'instances')
      train, evaluation = (instance_store.InstanceSource(
          directory, stored['splits'][split]['shards'], data_cfg.seq_len)
                           for split in ('train', 'eval'))
      return tok, train, evaluation, stored['most_frequent_token']
  tok, train_docs, eval_docs = _token_documents(config, workdir)
  train_table = instances.make_table(train_docs, tok, data_cfg, config.seed)
  eval_table = instances.make_table(eval_docs, tok, data_cfg, config.seed + 1)
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
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(dataset)


def build(config, workdir: str) -> PretrainData:
  data_cfg = config.data
  tok, train_rows, eval_rows, most_frequent = _instances(config, workdir)
  num_train = len(train_rows)

  batch_size = config.train.batch_size
  if batch_size % jax.process_count():
    raise UserError(f'train.batch_size {batch_size} is not divisible by the '
                    f'{jax.process_count()} processes')
  local_batch = batch_size // jax.process_count()
  if num_train < batch_size:
    raise UserError(f'the corpus yields {num_train} training sequences, fewer than one '
                    f'batch of {batch_size}; lower --config.train.batch_size or add text')

  train = (grain.MapDataset.range(num_train)
           .shuffle(seed=config.seed)
           .repeat(None)
           .batch(batch_size, drop_remainder=True)
           .map_with_index(ProcessRows(train_rows, tok, data_cfg.masking, seed=config.seed,
                                       local_batch=local_batch, global_batch=batch_size,
                                       dupe_factor=data_cfg.masking.dupe_factor)))

  # One fixed mask (own seed per row) for every evaluation, so evals compare.
  n_eval = len(eval_rows)
  num_eval_batches = min(n_eval // batch_size, config.train.eval_batches)
  if not num_eval_batches:
    raise UserError(f'the held-out split has {n_eval} sequences, fewer than one batch of '
                    f'{batch_size}; raise --config.data.eval_fraction or add text')
  eval_batches = []
  for b in range(num_eval_batches):
    rows = b * batch_size + jax.process_index() * local_batch + np.arange(local_batch)
    rngs = [row_generator(config.seed, EVAL_STREAM, r) for r in rows]
    eval_batches.append(mask_rows(eval_rows.rows(rows), tok, data_cfg.masking, rngs))
  return PretrainData(tok, train, eval_batches, num_train, most_frequent)
