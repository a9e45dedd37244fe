"""The one held-out rule: which documents of a corpus are kept for evaluation.

Shuffle the document indices with `random.Random(seed)` and hold out the first
`max(1, int(n * eval_fraction))`. The pipeline splits a corpus at run time with it,
`bertjax data prepare` and `bertjax data tfds` store the same split; splits already
stored (older versions sampled them another way) are read as stored.
"""
from __future__ import annotations

import random

from bertjax.errors import UserError


def split_indices(num_documents: int, eval_fraction: float,
                  seed: int) -> tuple[list[int], list[int]]:
  """(training, held-out) document indices, each in the rule's shuffled order.

  At least one document is held out, and at least one is left to train on.
  """
  if not 0 <= eval_fraction < 1:
    raise UserError(f'eval_fraction {eval_fraction} must be in [0, 1)')
  order = list(range(num_documents))
  random.Random(seed).shuffle(order)
  n_eval = max(1, int(num_documents * eval_fraction))
  if num_documents - n_eval < 1:
    raise UserError(f'the corpus has {num_documents} document(s); it needs at least two '
                    'to hold one out for evaluation')
  return order[n_eval:], order[:n_eval]
