"""PMI n-gram vocabularies for PMI masking (Levine et al. 2021, "PMI-Masking").

A word is a word-start piece and the pieces after it (the tokenizer's `word_start_V`,
as whole-word masking sees words). Over a corpus of sentences of token ids, every
n-gram of 1..max_n words inside a sentence is counted; an n-gram of 2 <= n <= max_n
words seen at least `min_count` times is scored by the paper's PMI_n,

  PMI_n(w1..wn) = log p(w1..wn) - max over segmentations of w1..wn into >= 2
                  contiguous parts of sum log p(part),

with p(x) the count of x over the number of n-grams of x's length; the `size`
highest-scoring n-grams (all lengths ranked together) make the vocabulary. The file
is JSON: the n-grams as token ids (and their text, for people), their counts and
scores, and the fingerprint of the tokenizer whose ids they are, so a vocabulary
is never used with another tokenizer.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import os

from bertjax import storage
from bertjax.data import prepared, tokenizer as tokenizer_lib
from bertjax.errors import UserError

FORMAT, VERSION = 'bertjax-pmi-vocab', 1
MAX_N = 5
# `bertjax data pmi`'s defaults: n-grams seen fewer times are not scored; n-grams kept
# (the paper keeps ~800K)
DEFAULT_MIN_COUNT = 10
DEFAULT_SIZE = 800_000


class NgramVocab:
  """A set of n-grams as tuples of token ids, and the cutting of a row into units."""

  def __init__(self, ngrams, max_n: int):
    self.ngrams = frozenset(tuple(int(i) for i in g) for g in ngrams)
    self.max_n = max_n
    # The longest n-gram (in tokens) starting with each token: most words start none,
    # so most words are settled by one dict lookup (masking runs per batch).
    self.longest = {}
    for g in self.ngrams:
      self.longest[g[0]] = max(self.longest.get(g[0], 0), len(g))

  def __len__(self):
    return len(self.ngrams)

  def segment(self, ids, first, size, left):
    """Units of one row's words, left to right: at each word the longest vocabulary
    n-gram starting there (inside its segment), else the word alone.

    `first`/`size`: each word's first position and piece count; `left`: words from
    it to its segment's end. Returns (first word, words, tokens) per unit.
    """
    units, w, n = [], 0, len(first)
    while w < n:
      unit = (w, 1, size[w])
      longest = self.longest.get(ids[first[w]], 0)
      for m in range(min(self.max_n, left[w]) if longest else 1, 1, -1):
        end = first[w + m - 1] + size[w + m - 1]
        if end - first[w] <= longest and tuple(ids[first[w]:end]) in self.ngrams:
          unit = (w, m, end - first[w])
          break
      units.append(unit)
      w += unit[1]
    return units


def sentence_words(ids, word_start_V) -> list[tuple[int, ...]]:
  """A sentence of ids as words: tuples of pieces, a new one at each word start."""
  words = []
  for i in ids:
    if word_start_V[i] or not words:
      words.append([i])
    else:
      words[-1].append(i)
  return [tuple(w) for w in words]


def count_ngrams(sentences, word_start_V, max_n: int = MAX_N):
  """Counter of word n-grams (tuples of word tuples), n = 1..max_n, within sentences."""
  counts = collections.Counter()
  for ids in sentences:
    words = sentence_words(ids, word_start_V)
    for n in range(1, max_n + 1):
      for i in range(len(words) - n + 1):
        counts[tuple(words[i:i + n])] += 1
  return counts


def pmi_scores(counts, *, min_count: int, max_n: int = MAX_N) -> dict:
  """PMI_n of every n-gram of 2..max_n words counted at least `min_count` times."""
  totals = collections.Counter()
  for gram, c in counts.items():
    totals[len(gram)] += c
  log_p = lambda gram: math.log(counts[gram] / totals[len(gram)])
  scores = {}
  for gram, c in counts.items():
    n = len(gram)
    if n < 2 or n > max_n or c < min_count:
      continue
    # best[i][j]: the most probable cutting of gram[i:j] into one or more parts; the
    # n-gram's own probability is left out at the top, so its parts number >= 2.
    best = [[-math.inf] * (n + 1) for _ in range(n + 1)]
    for span in range(1, n + 1):
      for i in range(n - span + 1):
        j = i + span
        own = log_p(gram[i:j]) if span < n else -math.inf
        best[i][j] = max([own] + [best[i][k] + best[k][j] for k in range(i + 1, j)])
    scores[gram] = log_p(gram) - best[0][n]
  return scores


def build(sentences, tok: tokenizer_lib.Tokenizer, *, min_count: int, size: int,
          max_n: int = MAX_N) -> list[dict]:
  """The `size` n-grams with the highest PMI_n, best first, as dicts for the file."""
  if not 2 <= max_n <= MAX_N:
    raise UserError(f'PMI n-grams have 2 to {MAX_N} words; --max_n {max_n} is outside that')
  if min_count < 1 or size < 1:
    raise UserError(f'--min_count {min_count} and --size {size} must be positive')
  counts = count_ngrams(sentences, tok.word_start_V, max_n)
  scores = pmi_scores(counts, min_count=min_count, max_n=max_n)
  ranked = sorted(scores, key=lambda g: (-scores[g], g))[:size]
  return [dict(ids=[i for word in g for i in word], words=len(g),
               text=tok.decode([i for word in g for i in word]),
               count=counts[g], pmi=round(scores[g], 4)) for g in ranked]


def save(path: str, ngrams: list[dict], tok: tokenizer_lib.Tokenizer, *, min_count: int,
         max_n: int, corpus: str) -> None:
  record = dict(format=FORMAT, version=VERSION,
                tokenizer=dict(fingerprint=prepared.fingerprint(tok), vocab_size=tok.vocab_size,
                               source=str(tok.path)),
                corpus=corpus, min_count=min_count, max_n=max_n, ngrams=ngrams)
  storage.as_path(path).parent.mkdir(parents=True, exist_ok=True)  # local or gs://
  storage.write_atomic(path, json.dumps(record, ensure_ascii=False, indent=0))


def load(path: str, tok: tokenizer_lib.Tokenizer) -> NgramVocab:
  """The vocabulary in `path`, refused unless it was built with `tok`."""
  if not path:
    raise UserError('masking kind pmi needs a PMI vocabulary: build one with `bertjax data pmi '
                    '--corpus ... --tokenizer DIR --out FILE` and pass '
                    '--config.data.masking.pmi_vocab=FILE')
  return _load(os.fspath(storage.as_path(path)), prepared.fingerprint(tok))


@functools.lru_cache(maxsize=4)
def _load(path: str, fingerprint: str) -> NgramVocab:
  # Cached: the pipeline asks for it every batch (and the file never changes under a run).
  try:
    record = json.loads(storage.as_path(path).read_text(encoding='utf-8'))
  except OSError as e:
    raise UserError(f'data.masking.pmi_vocab {path} cannot be read ({e.strerror or e}); build '
                    'it with `bertjax data pmi --corpus ... --tokenizer DIR --out FILE`') from None
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise UserError(f'{path} is not a PMI vocabulary (not JSON); build one with '
                    '`bertjax data pmi`') from None
  if record.get('format') != FORMAT or record.get('version') != VERSION:
    raise UserError(f'{path} is not a PMI vocabulary of this version; build it again with '
                    '`bertjax data pmi`')
  if not isinstance(record.get('tokenizer'), dict) or 'ngrams' not in record:
    raise UserError(f'{path} is not a whole PMI vocabulary; build it again with '
                    '`bertjax data pmi`')
  if record['tokenizer'].get('fingerprint') != fingerprint:
    raise UserError(f'{path} was built with another tokenizer ({record["tokenizer"]["source"]}, '
                    f'vocab {record["tokenizer"]["vocab_size"]}) than this run uses; build it '
                    'again with `bertjax data pmi --tokenizer` naming this run\'s tokenizer')
  return NgramVocab((g['ids'] for g in record['ngrams']), record['max_n'])
