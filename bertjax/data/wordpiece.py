"""BERT's WordPiece tokenizer for a Hugging Face `vocab.txt`, run by `tokenizers`.

The pipeline is the one `transformers.BertTokenizerFast` builds: BertNormalizer
(clean text, spaces around CJK ideographs, with lower-casing also accents
stripped), BertPreTokenizer (whitespace and punctuation) and the WordPiece model
with '##' continuations, where a word that does not split or is longer than 100
characters becomes one [UNK]. No special tokens are added to it, so a '[MASK]'
written in text is three pieces here; tokenizer_base.encode_with_special_tokens
reads it as the mask for user input.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tokenizers

from bertjax.data.tokenizer_base import SPECIAL_TOKENS
from bertjax.errors import UserError

_CONTINUATION = '##'
_MAX_INPUT_CHARS_PER_WORD = 100


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


def _bert_pipeline(piece_to_id: dict[str, int], do_lower_case: bool) -> tokenizers.Tokenizer:
  model = tokenizers.models.WordPiece(piece_to_id, unk_token='[UNK]',
                                      continuing_subword_prefix=_CONTINUATION,
                                      max_input_chars_per_word=_MAX_INPUT_CHARS_PER_WORD)
  pipeline = tokenizers.Tokenizer(model)
  # strip_accents=None follows lowercase, as in BERT.
  pipeline.normalizer = tokenizers.normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case)
  pipeline.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  pipeline.decoder = tokenizers.decoders.WordPiece(_CONTINUATION, cleanup=False)
  return pipeline


class WordPieceTokenizer:
  """A BERT `vocab.txt` (id = line number) behind SentencePieceTokenizer's interface."""

  def __init__(self, vocab_path: str, do_lower_case: bool = True):
    self.path = vocab_path
    self.do_lower_case = do_lower_case
    self.pieces = _read_vocab(vocab_path)
    # A repeated line keeps its last id, as `transformers` reads vocab.txt.
    piece_to_id = {p: i for i, p in enumerate(self.pieces)}
    missing = [t for t in SPECIAL_TOKENS if t not in piece_to_id]
    if missing:
      raise UserError(f'{vocab_path} lacks the special token(s) {", ".join(missing)}; '
                      f'a BERT vocab.txt must contain all of {", ".join(SPECIAL_TOKENS)}')
    ids = [piece_to_id[t] for t in SPECIAL_TOKENS]
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids
    self.vocab_size = len(self.pieces)
    self.special_V = np.zeros(self.vocab_size, bool)
    self.special_V[ids] = True
    self.word_start_V = np.array([not p.startswith(_CONTINUATION) for p in self.pieces])
    self._pipeline = _bert_pipeline(piece_to_id, do_lower_case)

  def encode(self, text: str) -> list[int]:
    return self._pipeline.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text, in one call that `tokenizers` spreads over the cores."""
    return [e.ids for e in self._pipeline.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    # By piece, not through the model's id table, which lacks a repeated line's first id.
    pieces = [self.pieces[int(i)] for i in ids if not self.special_V[int(i)]]
    return self._pipeline.decoder.decode(pieces)

  def id_to_piece(self, i: int) -> str:
    return self.pieces[int(i)]
