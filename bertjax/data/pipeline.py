"""The pre-training input pipeline: corpus -> tokenizer -> instances -> masked batches.

grain does the ordering: each process takes its own slice of the instances, shuffles
it per epoch from the seed, batches, and masks each batch with an RNG derived from
(seed, batch index), so masks are fresh every epoch (dynamic masking) and a restored
iterator replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import random

import grain
import jax
import numpy as np

from bertjax.data import corpus, instances, masking, tokenizer as tokenizer_lib
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


def _make_instances(documents, tok, data_cfg, seed: int):
  tokenized = [[ids for ids in (tok.encode(s) for s in doc) if ids] for doc in documents]
  tokenized = [doc for doc in tokenized if doc]
  pairs = instances.nsp_pairs(tokenized, seq_len=data_cfg.seq_len,
                              short_seq_prob=data_cfg.short_seq_prob, rng=random.Random(seed))
  return instances.pack_pairs(pairs, seq_len=data_cfg.seq_len, cls_id=tok.cls_id,
                              sep_id=tok.sep_id, pad_id=tok.pad_id)


class MaskBatch(grain.transforms.RandomMap):
  """Gathers a batch of instances by index and masks it."""

  def __init__(self, table, tok, masking_cfg):
    self.table, self.tok, self.cfg = table, tok, masking_cfg
    self.random_ids = np.flatnonzero(~tok.special_V)

  def random_map(self, indices, rng: np.random.Generator):
    batch = {k: v[indices] for k, v in self.table.items()}
    return apply_masking(batch, self.tok, self.cfg, rng, self.random_ids)


def apply_masking(batch, tok, masking_cfg, rng, random_ids):
  ids = batch['input_ids']
  masked = masking.mask(ids, tok.word_start_V[ids], tok.special_V[ids],
                        kind=masking_cfg.kind, rate=masking_cfg.rate,
                        max_predictions=masking_cfg.max_predictions, rng=rng,
                        vocab_size=tok.vocab_size, mask_id=tok.mask_id, random_ids=random_ids)
  return dict(batch, input_ids=masked['input_ids'], mlm_positions=masked['positions'],
              mlm_targets=masked['targets'], mlm_weights=masked['weights'])


def build(config, workdir: str) -> PretrainData:
  data_cfg = config.data
  documents = corpus.load_documents(data_cfg.corpus, num_embedded=data_cfg.embedded_documents,
                                    seed=config.seed)
  train_docs, eval_docs = _split_documents(documents, data_cfg.eval_fraction, config.seed)
  tok = load_or_train_tokenizer(data_cfg, train_docs, workdir)
  train_table = _make_instances(train_docs, tok, data_cfg, config.seed)
  eval_table = _make_instances(eval_docs, tok, data_cfg, config.seed + 1)
  num_train = len(train_table['nsp_labels'])

  batch_size = config.train.batch_size
  if batch_size % jax.process_count():
    raise UserError(f'train.batch_size {batch_size} is not divisible by the '
                    f'{jax.process_count()} processes')
  local_batch = batch_size // jax.process_count()
  if num_train < batch_size:
    raise UserError(f'the corpus yields {num_train} training sequences, fewer than one '
                    f'batch of {batch_size}; lower --config.train.batch_size or add text')

  random_ids = np.flatnonzero(~tok.special_V)
  train = (grain.MapDataset.range(num_train)
           .slice(slice(jax.process_index(), None, jax.process_count()))
           .shuffle(seed=config.seed)
           .repeat(None)
           .batch(local_batch, drop_remainder=True)
           .random_map(MaskBatch(train_table, tok, data_cfg.masking), seed=config.seed))

  eval_rng = np.random.default_rng(config.seed)  # one fixed mask: comparable evals
  eval_batches = []
  n_eval = len(eval_table['nsp_labels'])
  for start in range(0, n_eval - local_batch + 1, local_batch)[:config.train.eval_batches]:
    rows = np.arange(start, start + local_batch)
    batch = {k: v[rows] for k, v in eval_table.items()}
    eval_batches.append(apply_masking(batch, tok, data_cfg.masking, eval_rng, random_ids))
  if not eval_batches:
    raise UserError(f'the held-out split has {n_eval} sequences, fewer than one batch of '
                    f'{local_batch}; raise --config.data.eval_fraction or add text')

  counts = collections.Counter(train_table['input_ids'][train_table['attention_mask'] > 0])
  most_frequent = next(t for t, _ in counts.most_common() if not tok.special_V[t])
  return PretrainData(tok, train, eval_batches, num_train, int(most_frequent))
