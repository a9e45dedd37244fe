"""Documents of token ids -> fixed-length BERT pre-training instances.

Sentence pairs follow BERT's create_pretraining_data.py: fill a target length
(shorter with `short_seq_prob`), cut the chunk into segments A and B at a sentence
boundary, and lay out [CLS] A [SEP] B [SEP]. The pair's label depends on the
objective: `nsp` (BERT) replaces B half the time with text from another document
(putting the unused sentences back), `sop` (ALBERT) swaps A and B half the time,
`none` keeps one segment and no label (-1).

Packing (`pack_documents`) concatenates documents instead, [CLS] doc [SEP] after
[CLS] doc [SEP], cutting the stream at row ends so almost nothing is padding; each
document keeps its own segment id and positions from 0, so attention never crosses
documents and each one looks like a sequence of its own.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Iterable, Sequence

import numpy as np

from bertjax.errors import UserError

Document = Sequence[Sequence[int]]  # sentences of token ids
OBJECTIVES = ('nsp', 'sop', 'none')
# A packed row ends in padding rather than start a document with fewer tokens.
MIN_PACKED_SEGMENT = 8


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random):
  """Drops tokens from the front or back of the longer segment, as BERT does."""
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def sentence_pairs(documents: Sequence[Document], *, seq_len: int, short_seq_prob: float,
                   objective: str, rng: random.Random):
  """Yields (segment_a, segment_b or None, label) for every chunk of every document.

  Labels: nsp 1 = B is from another document; sop 1 = A and B swapped (or, for a
  one-sentence chunk, B from another document, as ALBERT does); none -1.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f'sentence objective {objective!r} is not one of {OBJECTIVES}')
  max_tokens = seq_len - (2 if objective == 'none' else 3)
  for doc_index, document in enumerate(documents):
    # Mostly full sequences; sometimes short ones so the model sees short inputs too.
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    chunk, length, i = [], 0, 0
    while i < len(document):
      chunk.append(document[i])
      length += len(document[i])
      if i == len(document) - 1 or length >= target:
        if objective == 'none':
          yield [t for s in chunk for t in s][:max_tokens], None, -1
        else:
          pair = _pair(documents, doc_index, chunk, target, objective, rng)
          if pair is not None:
            a, b, label, unused = pair
            i -= unused  # the sentences B did not use go back into the stream
            _truncate_pair(a, b, max_tokens, rng)
            if a and b:
              yield a, b, label
        chunk, length = [], 0
      i += 1


def _pair(documents, doc_index, chunk, target, objective, rng):
  a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
  a = [t for s in chunk[:a_end] for t in s]
  take_other = len(documents) > 1 and (
      len(chunk) == 1 or (objective == 'nsp' and rng.random() < 0.5))
  if take_other:
    other = rng.randrange(len(documents) - 1)
    other_doc = documents[other + (other >= doc_index)]  # any other document
    b = []
    for sentence in other_doc[rng.randrange(len(other_doc)):]:
      b.extend(sentence)
      if len(b) >= target - len(a):
        break
    return a, b, 1, len(chunk) - a_end
  if len(chunk) == 1:
    return None
  b = [t for s in chunk[a_end:] for t in s]
  if objective == 'sop' and rng.random() < 0.5:
    return b, a, 1, 0
  return a, b, 0, 0


def pack_pairs(pairs: Iterable, *, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
  """Stacks (a, b or None, label) into padded arrays.

  Returns input_ids, token_type_ids, attention_mask (1 on tokens, 0 on padding) and
  position_ids, all (N, L) int32, and nsp_labels (N,) int32.
  """
  pairs = list(pairs)
  table = _empty(len(pairs), seq_len, pad_id)
  for row, (a, b, label) in enumerate(pairs):
    tokens = [cls_id, *a, sep_id] + ([*b, sep_id] if b is not None else [])
    table['input_ids'][row, :len(tokens)] = tokens
    table['token_type_ids'][row, len(a) + 2:len(tokens)] = 1
    table['attention_mask'][row, :len(tokens)] = 1
    table['position_ids'][row, :len(tokens)] = np.arange(len(tokens))
    table['nsp_labels'][row] = label
  return table


def pack_documents(documents: Sequence[Document], *, seq_len: int, cls_id: int, sep_id: int,
                   pad_id: int):
  """Concatenates documents into full rows; attention_mask holds each token's
  document id within its row (1, 2, ...; 0 on padding)."""
  rows: list[list[tuple[int, list[int]]]] = []  # per row: (segment id, tokens)
  row, used = [], 0
  for document in documents:
    tokens = [t for sentence in document for t in sentence]
    while tokens:
      room = seq_len - used - 2
      if room < MIN_PACKED_SEGMENT:
        rows.append(row)
        row, used = [], 0
        continue
      piece, tokens = tokens[:room], tokens[room:]
      row.append([cls_id, *piece, sep_id])
      used += len(piece) + 2
  if row:
    rows.append(row)
  table = _empty(len(rows), seq_len, pad_id)
  for r, segments in enumerate(rows):
    start = 0
    for segment_id, segment in enumerate(segments, start=1):
      end = start + len(segment)
      table['input_ids'][r, start:end] = segment
      table['attention_mask'][r, start:end] = segment_id
      table['position_ids'][r, start:end] = np.arange(len(segment))
      start = end
  table['nsp_labels'][:] = -1
  return table


def tokenize(documents, tok) -> list[list[list[int]]]:
  """Text documents -> sentences of ids, dropping what tokenizes to nothing."""
  tokenized = [[ids for ids in (tok.encode(s) for s in doc) if ids] for doc in documents]
  return [doc for doc in tokenized if doc]


@dataclasses.dataclass(frozen=True)
class InstanceSettings:
  """What an instance table depends on besides the documents, tokenizer and seed
  (`data.seq_len`, `data.short_seq_prob`, `data.sentence_objective`, `data.packing`)."""
  seq_len: int
  short_seq_prob: float
  sentence_objective: str
  packing: bool

  @classmethod
  def from_data_config(cls, data_cfg) -> InstanceSettings:
    return cls(seq_len=data_cfg.seq_len, short_seq_prob=data_cfg.short_seq_prob,
               sentence_objective=data_cfg.sentence_objective, packing=data_cfg.packing)


def make_table(documents: Sequence[Document], tok, settings: InstanceSettings, seed: int):
  """Token-id documents -> the instance table `settings` ask for: sentence pairs
  (seq_len, short_seq_prob, sentence_objective) or packed rows (packing)."""
  ids = dict(seq_len=settings.seq_len, cls_id=tok.cls_id, sep_id=tok.sep_id,
             pad_id=tok.pad_id)
  if settings.packing:
    return pack_documents(documents, **ids)
  if settings.sentence_objective not in OBJECTIVES:
    raise UserError(f'data.sentence_objective {settings.sentence_objective!r} is unknown; '
                    f'choose one of {OBJECTIVES}')
  pairs = sentence_pairs(documents, seq_len=settings.seq_len,
                         short_seq_prob=settings.short_seq_prob,
                         objective=settings.sentence_objective, rng=random.Random(seed))
  return pack_pairs(pairs, **ids)


def most_frequent_token(table, tok) -> int:
  """The commonest non-special token: always predicting it is MLM's baseline."""
  counts = np.bincount(table['input_ids'][table['attention_mask'] > 0],
                       minlength=tok.vocab_size)
  counts[tok.special_V] = 0
  return int(counts.argmax())


def _empty(n: int, seq_len: int, pad_id: int):
  return dict(input_ids=np.full((n, seq_len), pad_id, np.int32),
              token_type_ids=np.zeros((n, seq_len), np.int32),
              attention_mask=np.zeros((n, seq_len), np.int32),
              position_ids=np.zeros((n, seq_len), np.int32),
              nsp_labels=np.zeros((n,), np.int32))
