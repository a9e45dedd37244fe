"""Tokenizers behind one interface: ids, BERT special tokens and word starts.

Callers import the interface from here: `Tokenizer`, `encode_pair`,
`encode_with_special_tokens` and `SPECIAL_TOKENS` are tokenizer_base's, re-exported;
`find`/`load`/`save` pick SentencePiece (`spm.model`, defined here) or WordPiece
(`vocab.txt`, wordpiece.py) from a tokenizer directory.

The directory may be local or a URL (`gs://`): SentencePiece and `tokenizers` read only
local files, so a remote model or vocabulary is staged to local disk first
(storage.local_copy), and `.path` is that local file.

SentencePiece word starts drive whole-word masking: a piece starts a word when it begins
with '▁' or is a lone punctuation mark (ALBERT's rule).
"""
from __future__ import annotations

import io
import json
import os
import unicodedata
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from bertjax import storage
from bertjax.data.tokenizer_base import (SPECIAL_TOKENS, Tokenizer, encode_pair,
                                         encode_with_special_tokens)
from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError

__all__ = ['SPECIAL_TOKENS', 'SentencePieceTokenizer', 'Tokenizer', 'WordPieceTokenizer',
           'encode_pair', 'encode_with_special_tokens', 'find', 'load', 'save',
           'train_sentencepiece']

_SP_WORD_BOUNDARY = '\u2581'


def find(directory: str | os.PathLike) -> Tokenizer | None:
  """The tokenizer saved in a workdir's `tokenizer/` directory, or None."""
  directory = storage.as_path(directory)
  if (directory / 'spm.model').is_file():
    return SentencePieceTokenizer(directory / 'spm.model')
  if (directory / 'vocab.txt').is_file():
    lower = True
    config_path = directory / 'tokenizer_config.json'
    if config_path.is_file():
      lower = bool(json.loads(config_path.read_text()).get('do_lower_case', True))
    return WordPieceTokenizer(storage.local_copy(directory / 'vocab.txt'), do_lower_case=lower)
  return None


def save(tok: Tokenizer, directory: str | os.PathLike) -> None:
  """Writes `tok` into a workdir's `tokenizer/` directory, where `find` reads it."""
  directory = storage.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  with open(tok.path, 'rb') as f:
    content = f.read()
  if isinstance(tok, SentencePieceTokenizer):
    storage.write_atomic(directory / 'spm.model', content)
    return
  storage.write_atomic(directory / 'vocab.txt', content)
  storage.write_atomic(directory / 'tokenizer_config.json',
                       json.dumps({'do_lower_case': tok.do_lower_case}))


def load(directory: str) -> Tokenizer:
  tok = find(directory)
  if tok is None:
    raise UserError(f'{directory} holds no tokenizer (spm.model or vocab.txt)')
  return tok


def _is_punctuation(piece: str) -> bool:
  return len(piece) == 1 and unicodedata.category(piece).startswith('P')


class SentencePieceTokenizer:
  """A SentencePiece model with [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""

  def __init__(self, model_path: str | os.PathLike):
    model_path = os.fspath(model_path)
    if not storage.is_url(model_path) and not os.path.isfile(model_path):
      raise UserError(f'tokenizer model {model_path!r} not found')
    model_path = storage.local_copy(model_path)  # SentencePiece reads local files only
    self.path = model_path
    self.sp = spm.SentencePieceProcessor(model_file=model_path)
    ids = [self.sp.piece_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
      raise UserError(f'{model_path} does not put {SPECIAL_TOKENS} at ids 0-4; train it '
                      'with `bertjax data tokenizer` or bertjax.data.tokenizer.train_sentencepiece')
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids
    self.vocab_size = self.sp.get_piece_size()
    pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
    self.special_V = np.zeros(self.vocab_size, bool)
    self.special_V[:len(SPECIAL_TOKENS)] = True
    self.word_start_V = np.array(
        [p.startswith(_SP_WORD_BOUNDARY) or _is_punctuation(p) for p in pieces])

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode(list(texts))

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids if not self.special_V[i]])

  def id_to_piece(self, i: int) -> str:
    return self.sp.id_to_piece(int(i))


def train_sentencepiece(sentences: Iterable[str], out_path: str, *, vocab_size: int,
                        model_type: str = 'unigram') -> SentencePieceTokenizer:
  """Trains SentencePiece with BERT's special tokens and writes it atomically."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, pad_id=0, pad_piece='[PAD]', unk_id=1, unk_piece='[UNK]',
      bos_id=-1, eos_id=-1, control_symbols=['[CLS]', '[SEP]', '[MASK]'],
      # A small corpus may not fill vocab_size; take what it supports.
      hard_vocab_limit=False, character_coverage=0.9995,
      num_threads=os.cpu_count() or 1, minloglevel=2)
  storage.as_path(out_path).parent.mkdir(parents=True, exist_ok=True)
  storage.write_atomic(out_path, model.getvalue())
  return SentencePieceTokenizer(out_path)
