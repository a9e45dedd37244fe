"""Masked-LM target selection with static shapes.

`mask` picks `num_to_predict = min(max_predictions, max(1, round(n * rate)))` of the
n maskable (non-special) tokens of each row; of those, 80% become [MASK], 10% a
random token and 10% stay. Outputs are padded to max_predictions with weight 0, so
the MLM head gathers exactly (B, P) positions under jit.
"""
from __future__ import annotations

import numpy as np

from bertjax.errors import UserError

KINDS = ('token',)


def mask(ids_BL, word_start_BL, special_BL, *, kind: str, rate: float,
         max_predictions: int, rng: np.random.Generator, vocab_size: int, mask_id: int,
         random_ids=None):
  """Masks a batch; returns dict(input_ids BL, positions BP, targets BP, weights BP).

  `word_start_BL` marks the first piece of each word (used by word-level kinds);
  `special_BL` marks tokens never chosen ([CLS], [SEP], [PAD]). `random_ids` are
  the ids drawn for the 10% random replacements (default: all of the vocabulary).
  """
  del word_start_BL  # token-level masking ignores word boundaries.
  if kind not in KINDS:
    raise UserError(f'masking kind {kind!r} is not available; choose one of {KINDS}')
  ids_BL = np.asarray(ids_BL)
  batch, length = ids_BL.shape
  p = max_predictions
  if p > length:
    raise UserError(f'max_predictions {p} exceeds the sequence length {length}')
  candidate_BL = ~np.asarray(special_BL, bool)
  n_B = candidate_BL.sum(1)
  k_B = np.where(n_B > 0, np.minimum(p, np.maximum(1, np.rint(n_B * rate))), 0)

  # A uniformly random subset of size k: the k candidates with the smallest scores.
  scores_BL = np.where(candidate_BL, rng.random((batch, length)), 2.0)
  order_BP = np.argsort(scores_BL, axis=1, kind='stable')[:, :p]
  chosen_BP = np.arange(p)[None, :] < k_B[:, None]
  positions_BP = np.sort(np.where(chosen_BP, order_BP, length), axis=1)
  chosen_BP = positions_BP < length  # sorting moved the chosen ones to the front
  positions_BP = np.where(chosen_BP, positions_BP, 0).astype(np.int32)

  rows_BP = np.arange(batch)[:, None]
  targets_BP = np.where(chosen_BP, ids_BL[rows_BP, positions_BP], 0).astype(np.int32)
  decision_BP = rng.random((batch, p))
  if random_ids is None:
    random_ids = np.arange(vocab_size)
  random_BP = rng.choice(np.asarray(random_ids), size=(batch, p))
  replacement_BP = np.where(decision_BP < 0.8, mask_id,
                            np.where(decision_BP < 0.9, random_BP, targets_BP))
  input_ids_BL = ids_BL.copy()
  r, c = np.nonzero(chosen_BP)
  input_ids_BL[r, positions_BP[r, c]] = replacement_BP[r, c]
  return dict(input_ids=input_ids_BL.astype(np.int32), positions=positions_BP,
              targets=targets_BP, weights=chosen_BP.astype(np.float32))
