"""Documents of token ids -> fixed-length BERT pre-training instances.

Follows BERT's create_pretraining_data.py: fill a target length (shorter with
`short_seq_prob`), cut the chunk into segments A and B at a sentence boundary, and
for next-sentence prediction replace B half the time with text from another
document (putting the unused sentences back). Layout: [CLS] A [SEP] B [SEP].
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

Document = Sequence[Sequence[int]]  # sentences of token ids


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random):
  """Drops tokens from the front or back of the longer segment, as BERT does."""
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def nsp_pairs(documents: Sequence[Document], *, seq_len: int, short_seq_prob: float,
              rng: random.Random):
  """Yields (segment_a, segment_b, is_random_next) lists of ids for every document."""
  max_tokens = seq_len - 3
  for doc_index, document in enumerate(documents):
    # Mostly full sequences; sometimes short ones so the model sees short inputs too.
    target = max_tokens if rng.random() >= short_seq_prob else rng.randint(2, max_tokens)
    chunk, length, i = [], 0, 0
    while i < len(document):
      chunk.append(document[i])
      length += len(document[i])
      if i == len(document) - 1 or length >= target:
        a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
        a = [t for s in chunk[:a_end] for t in s]
        b = []
        random_next = len(documents) > 1 and (len(chunk) == 1 or rng.random() < 0.5)
        if random_next:
          other = rng.randrange(len(documents) - 1)
          other_doc = documents[other + (other >= doc_index)]  # any other document
          for sentence in other_doc[rng.randrange(len(other_doc)):]:
            b.extend(sentence)
            if len(b) >= target - len(a):
              break
          i -= len(chunk) - a_end  # the unused sentences go back into the stream
        else:
          b = [t for s in chunk[a_end:] for t in s]
        _truncate_pair(a, b, max_tokens, rng)
        if a and b:
          yield a, b, random_next
        chunk, length = [], 0
      i += 1


def pack_pairs(pairs, *, seq_len: int, cls_id: int, sep_id: int, pad_id: int):
  """Stacks (a, b, is_random_next) into padded arrays.

  Returns input_ids (N, L) int32, token_type_ids (N, L) int32, attention_mask (N, L)
  int32 (1 on tokens, 0 on padding) and nsp_labels (N,) int32 (1 = B is random).
  """
  pairs = list(pairs)
  n = len(pairs)
  input_ids = np.full((n, seq_len), pad_id, np.int32)
  token_type_ids = np.zeros((n, seq_len), np.int32)
  attention_mask = np.zeros((n, seq_len), np.int32)
  nsp_labels = np.zeros((n,), np.int32)
  for row, (a, b, random_next) in enumerate(pairs):
    tokens = [cls_id, *a, sep_id, *b, sep_id]
    input_ids[row, :len(tokens)] = tokens
    token_type_ids[row, len(a) + 2:len(tokens)] = 1
    attention_mask[row, :len(tokens)] = 1
    nsp_labels[row] = int(random_next)
  return dict(input_ids=input_ids, token_type_ids=token_type_ids,
              attention_mask=attention_mask, nsp_labels=nsp_labels)
