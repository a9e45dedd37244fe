"""BERT's WordPiece tokenizer for a Hugging Face `vocab.txt`, in pure Python.

Lets a checkpoint's own vocabulary feed bertjax without `tokenizers` at run time.
The steps follow the `tokenizers` BertNormalizer and BertPreTokenizer behind
`transformers.BertTokenizer`, so the ids match it: drop NUL, U+FFFD and control,
format and private-use characters; map whitespace to spaces; put spaces around CJK
ideographs; when lower-casing, strip accents (NFD, drop Mn) and then lower-case
character by character (no final-sigma rule); split on whitespace and punctuation;
then greedy longest-match-first WordPiece with '##' continuations, where a word
that does not split (or is longer than 100 characters) becomes one [UNK].
"""
from __future__ import annotations

import os
import unicodedata
from typing import Sequence

import numpy as np

from bertjax.data.tokenizer import SPECIAL_TOKENS
from bertjax.errors import UserError

_CONTINUATION = '##'
# Control, format, private-use and surrogate characters; unassigned code points
# (Cn) stay, as in `tokenizers`.
_DROPPED_CATEGORIES = ('Cc', 'Cf', 'Co', 'Cs')
_MAX_INPUT_CHARS_PER_WORD = 100
_MAX_CACHED_WORDS = 1 << 20  # bounds memory on corpora with endless distinct words
# BERT's "Chinese character" blocks: CJK Unified Ideographs and their extensions
# and compatibility blocks; Japanese kana and Hangul are left as they are.
# `tokenizers` starts Extension E at U+2B920 where Google's BERT has U+2B820.
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(char: str) -> bool:
  cp = ord(char)
  return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(char: str) -> bool:
  """ASCII symbols count as punctuation too, as in BERT ('$', '+', '^', '`')."""
  cp = ord(char)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(char).startswith('P')


def _clean_char(char: str) -> str:
  """'' for characters BERT drops, ' ' for whitespace, ' X ' for CJK ideographs."""
  if char in '\t\n\r':
    return ' '
  if char in '\x00\ufffd' or unicodedata.category(char) in _DROPPED_CATEGORIES:
    return ''
  if char.isspace():
    return ' '
  if _is_cjk(char):
    return f' {char} '
  return char


def _isolate_punctuation(text: str) -> str:
  """Spaces around punctuation, so that splitting on whitespace splits it off too."""
  return ''.join(f' {c} ' if _is_punctuation(c) else c for c in text)


def _strip_accent_and_lower(char: str) -> str:
  """For NFD text: accents dropped first, then case, as `tokenizers` does."""
  return '' if unicodedata.category(char) == 'Mn' else char.lower()


class _CharTable(dict):
  """A `str.translate` table filled on first sight of each character.

  Every step but NFD maps characters independently, so memoising per character
  runs them at C speed after the first few kilobytes of text.
  """

  def __init__(self, *steps):
    super().__init__()
    self._steps = steps

  def __missing__(self, cp: int) -> str:
    text = chr(cp)
    for step in self._steps:
      text = step(text)
    self[cp] = text
    return text


def _read_vocab(vocab_path: str) -> list[str]:
  if not os.path.isfile(vocab_path):
    raise UserError(f'WordPiece vocabulary {vocab_path!r} not found; pass the vocab.txt '
                    'of a Hugging Face BERT checkpoint')
  # Lines end at '\n' only and lose trailing whitespace, as `tokenizers` reads them.
  with open(vocab_path, encoding='utf-8', newline='') as f:
    lines = f.read().split('\n')
  if lines[-1] == '':
    lines.pop()
  return [line.rstrip() for line in lines]


class WordPieceTokenizer:
  """A BERT `vocab.txt` (id = line number) behind SentencePieceTokenizer's interface."""

  def __init__(self, vocab_path: str, do_lower_case: bool = True):
    self.path = vocab_path
    self.do_lower_case = do_lower_case
    self.pieces = _read_vocab(vocab_path)
    # A repeated line keeps its last id, as `transformers` reads vocab.txt.
    self.piece_to_id = {p: i for i, p in enumerate(self.pieces)}
    missing = [t for t in SPECIAL_TOKENS if t not in self.piece_to_id]
    if missing:
      raise UserError(f'{vocab_path} lacks the special token(s) {", ".join(missing)}; '
                      f'a BERT vocab.txt must contain all of {", ".join(SPECIAL_TOKENS)}')
    ids = [self.piece_to_id[t] for t in SPECIAL_TOKENS]
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids
    self.vocab_size = len(self.pieces)
    self.special_V = np.zeros(self.vocab_size, bool)
    self.special_V[ids] = True
    self.word_start_V = np.array([not p.startswith(_CONTINUATION) for p in self.pieces])
    if do_lower_case:
      # NFD goes over the whole text, as it reorders marks across characters.
      self._tables = (_CharTable(_clean_char),
                      _CharTable(_strip_accent_and_lower, _isolate_punctuation))
    else:
      self._tables = (_CharTable(_clean_char, _isolate_punctuation),)
    self._word_cache: dict[str, list[int]] = {}

  def encode(self, text: str) -> list[int]:
    ids = []
    for word in self._words(text):
      cached = self._word_cache.get(word)
      if cached is None:
        if len(self._word_cache) >= _MAX_CACHED_WORDS:
          self._word_cache.clear()
        cached = self._word_cache[word] = self._wordpiece(word)
      ids.extend(cached)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    text = ' '.join(self.pieces[int(i)] for i in ids if not self.special_V[int(i)])
    return text.replace(' ' + _CONTINUATION, '')

  def id_to_piece(self, i: int) -> str:
    return self.pieces[int(i)]

  def _words(self, text: str) -> list[str]:
    """BERT's basic tokenizer: cleaned, optionally lower-cased, punctuation apart."""
    text = text.translate(self._tables[0])
    if self.do_lower_case:
      text = unicodedata.normalize('NFD', text).translate(self._tables[1])
    return text.split()

  def _wordpiece(self, word: str) -> list[int]:
    """Greedy longest match first; a word with an unmatched rest is one [UNK]."""
    if len(word) > _MAX_INPUT_CHARS_PER_WORD:
      return [self.unk_id]
    ids, start = [], 0
    while start < len(word):
      for end in range(len(word), start, -1):
        piece = word[start:end] if start == 0 else _CONTINUATION + word[start:end]
        if piece in self.piece_to_id:
          ids.append(self.piece_to_id[piece])
          start = end
          break
      else:
        return [self.unk_id]
    return ids
