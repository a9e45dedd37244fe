"""Masked-LM target selection with static shapes.

Every kind picks `num_to_predict = min(max_predictions, max(1, round(n * rate)))` of
the n maskable (non-special) tokens of each row, counted in tokens:

- token: a uniformly random subset of tokens (BERT).
- whole_word: shuffled words, each added whole while it fits the budget and skipped
  when it would overflow it (BERT's create_pretraining_data.py, do_whole_word_mask).
- span: spans of l ~ Geometric(span_p) words, truncated to 1..max_span and
  renormalised as SpanBERT's code does (mean 3.8 words for p=0.2), from uniformly
  random word starts (SpanBERT, pretraining/fairseq/data/masking.py).
- ngram: every word anchors one n-gram in random order, n <= max_ngram words with
  p(n) ∝ 1/n (ALBERT's create_pretraining_data.py).
- pmi: each segment's words are cut into units, left to right taking the longest
  n-gram of the PMI vocabulary (data/pmi.py) that starts at a word, else the word
  alone; then units are added whole like whole_word's words (Levine et al. 2021).

Of the chosen tokens 80% become [MASK], 10% a random token and 10% stay (the split
is `mask_prob`/`random_prob`), drawn per token, except for span, where SpanBERT
draws once per (merged) span. Outputs are
padded to max_predictions with weight 0, so the MLM head gathers exactly (B, P)
positions under jit.

Departures from the published code, so that the rules hold for every row: words
and their spans / n-grams never contain or cross a special token (BERT and ALBERT
skip [SEP] but let a word or n-gram run across it); the budget counts no special
token (theirs counts [CLS] and [SEP]); only whole words are chosen (SpanBERT cuts
its last span mid-word at the budget; here it ends at the last word that fits).
"""
from __future__ import annotations

import bisect
import functools
import math

import numpy as np

from bertjax.data import philox_rows
from bertjax.errors import UserError

KINDS = ('token', 'whole_word', 'span', 'ngram', 'pmi')
# Kinds whose chosen tokens form spans with unmasked boundaries (SpanBERT's SBO).
SPAN_KINDS = ('span',)


def predictions_for(rate: float, seq_len: int) -> int:
  """The max_predictions that holds `rate` of any row of `seq_len` tokens."""
  return max(1, min(seq_len, math.ceil(rate * seq_len)))


def predictions_needed(rate: float, seq_len: int) -> int:
  """The most predictions `rate` asks of a row: every row has [CLS] and a [SEP]."""
  return int(np.rint(max(seq_len - 2, 1) * rate))


def mask(ids_BL, word_start_BL, special_BL, *, kind: str, rate: float,
         max_predictions: int, rng: np.random.Generator | philox_rows.PhiloxRows,
         vocab_size: int, mask_id: int, random_ids=None, span_p: float = 0.2,
         max_span: int = 10, max_ngram: int = 3, mask_prob: float = 0.8,
         random_prob: float = 0.1, ngram_vocab=None):
  """Masks a batch; returns dict(input_ids BL, positions BP, targets BP, weights BP).

  `word_start_BL` marks the first piece of each word (used by word-level kinds);
  `special_BL` marks tokens never chosen ([CLS], [SEP], [PAD]). `random_ids` are
  the ids drawn for the 10% random replacements (default: all of the vocabulary).
  kind='pmi' needs `ngram_vocab` (a pmi.NgramVocab: n-grams as token-id tuples).
  kind='span' adds span_left, span_right (the unmasked boundary positions around
  each target's span, for SpanBERT's span-boundary objective) and span_offset (the
  target's 0-based place in its span), all (B, P) int32 and 0 on padding.
  Every draw from `rng` is (batch, n)-shaped with n fixed by the row length, whatever
  the batch holds, so with one stream a row (philox_rows.PhiloxRows) a row is masked
  the same way in any batch.
  """
  _check_options(kind, rate, span_p, max_span, max_ngram, mask_prob, random_prob)
  if kind == 'pmi' and ngram_vocab is None:
    raise UserError("masking kind 'pmi' needs a PMI n-gram vocabulary: build one with "
                    '`bertjax data pmi` and set data.masking.pmi_vocab to its file')
  ids_BL = np.asarray(ids_BL)
  batch, length = ids_BL.shape
  p = max_predictions
  if p > length:
    raise UserError(f'max_predictions {p} exceeds the sequence length {length}')
  candidate_BL = ~np.asarray(special_BL, bool)
  n_B = candidate_BL.sum(1)
  k_B = np.where(n_B > 0, np.minimum(p, np.maximum(1, np.rint(n_B * rate))), 0).astype(np.int64)

  if kind == 'token':
    chosen_BL = _choose_tokens(candidate_BL, k_B, rng)
  else:
    words = _Words(candidate_BL, np.asarray(word_start_BL, bool))
    if kind == 'pmi':
      covered_BW = _choose_pmi_units(words, ids_BL, ngram_vocab, k_B, rng, length)
    else:
      covered_BW = _choose_words(kind, words, k_B, rng, span_p, max_span, max_ngram, length)
    chosen_BL = candidate_BL & np.take_along_axis(covered_BW, words.index_BL, 1)

  # The chosen positions, ascending, first; at most k <= p of them per row.
  # Each chosen position goes to the slot its rank in the row names (no sort).
  r, c = np.nonzero(chosen_BL)
  slot = (np.cumsum(chosen_BL, axis=1) - 1)[r, c]
  kept = slot < p
  positions_BP = np.zeros((batch, p), np.int32)
  positions_BP[r[kept], slot[kept]] = c[kept]
  chosen_BP = np.arange(p) < np.minimum(chosen_BL.sum(1), p)[:, None]
  rows_BP = np.arange(batch)[:, None]
  targets_BP = np.where(chosen_BP, ids_BL[rows_BP, positions_BP], 0).astype(np.int32)
  if kind == 'span':
    first_BL, last_BL = _runs(chosen_BL)
    first_BP, last_BP = first_BL[rows_BP, positions_BP], last_BL[rows_BP, positions_BP]
    # One draw per span, read by all of its tokens through the span's first position.
    decision_BP = rng.random((batch, length))[rows_BP, first_BP]
  else:
    decision_BP = rng.random((batch, p))
  if random_ids is None:
    random_ids = np.arange(vocab_size)
  random_ids = np.asarray(random_ids)
  random_BP = random_ids[rng.integers(0, len(random_ids), size=(batch, p))]
  replacement_BP = np.where(decision_BP < mask_prob, mask_id,
                            np.where(decision_BP < mask_prob + random_prob, random_BP,
                                     targets_BP))
  input_ids_BL = ids_BL.copy()
  r, c = np.nonzero(chosen_BP)
  input_ids_BL[r, positions_BP[r, c]] = replacement_BP[r, c]
  out = dict(input_ids=input_ids_BL.astype(np.int32), positions=positions_BP,
             targets=targets_BP, weights=chosen_BP.astype(np.float32))
  if kind == 'span':
    # Boundaries are clipped into the row; only a row without [CLS]/[SEP]/[PAD]
    # around its text reaches the clip.
    out.update(
        span_left=np.where(chosen_BP, np.maximum(first_BP - 1, 0), 0).astype(np.int32),
        span_right=np.where(chosen_BP, np.minimum(last_BP + 1, length - 1), 0).astype(np.int32),
        span_offset=np.where(chosen_BP, positions_BP - first_BP, 0).astype(np.int32))
  return out


def _check_options(kind, rate, span_p, max_span, max_ngram, mask_prob, random_prob):
  if kind not in KINDS:
    raise UserError(f'masking kind {kind!r} is not available; choose one of {KINDS}')
  if not 0 <= rate <= 1:
    raise UserError(f'masking rate {rate} must lie in [0, 1]')
  if not (0 <= mask_prob and 0 <= random_prob and mask_prob + random_prob <= 1):
    raise UserError(f'masking mask_prob {mask_prob} and random_prob {random_prob} must be '
                    'non-negative and add up to at most 1 (the rest stays unchanged)')
  if not 0 < span_p <= 1:
    raise UserError(f'masking span_p {span_p} must lie in (0, 1]')
  for name, value in (('max_span', max_span), ('max_ngram', max_ngram)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise UserError(f'masking {name} {value!r} must be a positive integer')


def _choose_tokens(candidate_BL, k_B, rng):
  """A uniformly random subset of size k: the k candidates with the smallest scores
  (ties, which doubles make all but impossible, go to the earlier position)."""
  batch, length = candidate_BL.shape
  scores_BL = np.where(candidate_BL, rng.random((batch, length)), 2.0)
  # Each row's k-th smallest score by one partial sort (k varies by row: partition at
  # the largest k, then sort only the scores in front of it).
  most = int(k_B.max(initial=0))
  if not most:
    return np.zeros_like(candidate_BL)
  smallest_BK = np.sort(np.partition(scores_BL, most - 1, axis=1)[:, :most], axis=1)
  kth_B = smallest_BK[np.arange(batch), np.maximum(k_B - 1, 0)]
  below_BL = (scores_BL < kth_B[:, None]) & (k_B > 0)[:, None]
  tied_BL = scores_BL == kth_B[:, None]
  room_B = np.where(k_B > 0, k_B - below_BL.sum(1), 0)
  return below_BL | (tied_BL & (np.cumsum(tied_BL, axis=1) <= room_B[:, None]))


class _Words:
  """Each row's words: a word-start piece and the non-start pieces after it.

  A non-start piece right after a special token (or at the row's start) begins a
  word of its own, so no word contains or crosses [SEP]. Per-word arrays are
  (B, W + 1); column W is where special tokens point, never a real word.
  """

  def __init__(self, candidate_BL, word_start_BL):
    batch = len(candidate_BL)
    after_special_BL = np.ones_like(candidate_BL)
    after_special_BL[:, 1:] = ~candidate_BL[:, :-1]
    start_BL = candidate_BL & (word_start_BL | after_special_BL)
    self.n_B = start_BL.sum(1)
    self.width = width = int(self.n_B.max(initial=0))
    self.index_BL = np.where(candidate_BL, np.cumsum(start_BL, 1) - 1, width)
    flat = (np.arange(batch)[:, None] * (width + 1) + self.index_BL).ravel()
    self.size_BW = np.bincount(flat, minlength=batch * (width + 1)).reshape(batch, width + 1)
    self.first_BW = first_BW = np.full((batch, width + 1), -1)
    r, c = np.nonzero(start_BL)
    first_BW[r, self.index_BL[r, c]] = c
    # A segment's last word: no next word, or a special token before the next one.
    last_BW = np.ones((batch, width + 1), bool)
    last_BW[:, :width] = ((first_BW[:, 1:] != first_BW[:, :-1] + self.size_BW[:, :-1])
                          | (np.arange(1, width + 1) >= self.n_B[:, None]))
    # left_BW[:, w]: words from w to the end of its segment, w included.
    w_W = np.arange(width + 1)
    end_BW = np.minimum.accumulate(np.where(last_BW, w_W, width)[:, ::-1], axis=1)[:, ::-1]
    self.left_BW = end_BW - w_W + 1


def _choose_words(kind, words, k_B, rng, span_p, max_span, max_ngram, max_words):
  """Runs the kind's published selection loop over each row's words in random order.

  The loops are sequential by nature (each choice shrinks the budget and covers
  words), so they run per row in plain Python on a few dozen words; the random
  draws for all rows are made up front, `max_words` per row whatever the batch
  holds, so a row's draws do not depend on its batch-mates.
  """
  batch, width = len(k_B), max(words.width, 1)
  real_BW = np.arange(words.width) < words.n_B[:, None]
  uniforms = lambda: rng.random((batch, max_words))[:, :width]
  order_BW = np.argsort(np.where(real_BW, uniforms()[:, :words.width], 2.0), axis=1)
  if kind == 'span':
    lengths_S = np.arange(1, max_span + 1)
    prob_S = span_p * (1 - span_p) ** (lengths_S - 1)
    # Inverse-CDF sampling from uniforms: one cheap draw per row and word.
    cdf_S = np.cumsum(prob_S) / prob_S.sum()
    draw_BW = lengths_S[np.minimum(np.searchsorted(cdf_S, uniforms(), side='right'),
                                   len(lengths_S) - 1)]
    select = _select_spans
  elif kind == 'ngram':
    draw_BW = uniforms()
    weight_N = 1.0 / np.arange(1, max_ngram + 1)
    # cdfs[m - 1]: p(n) ∝ 1/n over n = 1..m, without its final 1.0, for bisect.
    cdfs = [(np.cumsum(weight_N[:m]) / weight_N[:m].sum())[:-1].tolist()
            for m in range(1, max_ngram + 1)]
    select = functools.partial(_select_ngrams, cdfs=cdfs)
  else:
    draw_BW, select = np.zeros((batch, 0)), _select_whole_words
  covered_BW = np.zeros((batch, words.width + 1), bool)
  rows = zip(order_BW.tolist(), draw_BW.tolist(), words.size_BW.tolist(),
             words.left_BW.tolist(), words.n_B.tolist(), k_B.tolist())
  for b, (order, draws, size, left, n, k) in enumerate(rows):
    covered_BW[b, :n] = select(order[:n], draws[:n], size[:n], left[:n], k)
  return covered_BW


def _choose_pmi_units(words, ids_BL, vocab, k_B, rng, max_words):
  """PMI masking: vocabulary n-grams and the remaining words as units, each unit
  added whole while it fits the budget (whole_word's rule), in random order."""
  batch = len(k_B)
  width = max(words.width, 1)
  # One uniform per word, `max_words` a row whatever the batch holds (see _choose_words);
  # a unit is ranked by its first word's draw.
  draw_BW = rng.random((batch, max_words))[:, :width]
  covered_BW = np.zeros((batch, words.width + 1), bool)
  rows = zip(ids_BL.tolist(), words.first_BW.tolist(), words.size_BW.tolist(),
             words.left_BW.tolist(), words.n_B.tolist(), draw_BW.tolist(), k_B.tolist())
  for b, (ids, first, size, left, n, draws, k) in enumerate(rows):
    units = vocab.segment(ids, first[:n], size[:n], left[:n])  # (first word, words, tokens)
    order = sorted(range(len(units)), key=lambda u: draws[units[u][0]])
    budget = k
    for u in order:
      if budget == 0:
        break
      start, n_words, tokens = units[u]
      if tokens <= budget:
        covered_BW[b, start:start + n_words] = True
        budget -= tokens
  return covered_BW


def _select_whole_words(order, draws, size, left, budget):
  """BERT: each word taken whole if it fits what is left of the budget, else skipped
  (a later, shorter word may still fit), so a row can end a few tokens short."""
  del draws, left  # words are drawn independently of each other
  chosen = [False] * len(size)
  for w in order:
    if budget == 0:
      break
    if size[w] <= budget:
      chosen[w], budget = True, budget - size[w]
  return chosen


def _select_spans(order, lengths, size, left, budget):
  """SpanBERT: from each anchor word, up to `length` words.

  Anchors are uniform over word starts, as the paper says (SpanBERT's code draws a
  uniform token and moves to its word's start, favouring long words); a chosen
  anchor is passed over, as SpanBERT redraws it. A span ends early at a special
  token, at an already chosen word (SpanBERT runs over it; spans here never
  overlap) or at the last whole word that fits the budget; an anchor word that does
  not fit is skipped. Spans that touch become one, as SpanBERT's merge_intervals
  makes them, so boundary tokens are never masked.
  """
  chosen = [False] * len(size)
  for anchor, length in zip(order, lengths):
    if budget == 0:
      break
    w, end = anchor, anchor + min(length, left[anchor])
    while w < end and not chosen[w] and size[w] <= budget:
      chosen[w], budget = True, budget - size[w]
      w += 1
  return chosen


def _select_ngrams(order, uniforms, size, left, budget, cdfs):
  """ALBERT: every word anchors one n-gram.

  n is drawn with p(n) ∝ 1/n over the lengths that stay inside the anchor's
  segment (ALBERT renormalises over the n-grams that exist), shortened while it
  would overflow the budget, and skipped when even one word overflows it or when
  any of its words is already chosen. ALBERT draws 80/10/10 per token.
  """
  chosen = [False] * len(size)
  for anchor, u in zip(order, uniforms):
    if budget == 0:
      break
    n = bisect.bisect_right(cdfs[min(left[anchor], len(cdfs)) - 1], u) + 1
    tokens = sum(size[anchor:anchor + n])
    while n and tokens > budget:
      n -= 1
      tokens -= size[anchor + n]
    if n and not any(chosen[anchor:anchor + n]):
      chosen[anchor:anchor + n] = [True] * n
      budget -= tokens
  return chosen


def _runs(chosen_BL):
  """First and last position of the run of consecutive chosen tokens around each
  position (meaningful where chosen)."""
  length = chosen_BL.shape[1]
  pos_L = np.arange(length)
  before_BL = np.zeros_like(chosen_BL)
  before_BL[:, 1:] = chosen_BL[:, :-1]
  after_BL = np.zeros_like(chosen_BL)
  after_BL[:, :-1] = chosen_BL[:, 1:]
  first_BL = np.maximum.accumulate(np.where(chosen_BL & ~before_BL, pos_L, 0), axis=1)
  last_BL = np.minimum.accumulate(
      np.where(chosen_BL & ~after_BL, pos_L, length)[:, ::-1], axis=1)[:, ::-1]
  return first_BL, last_BL
