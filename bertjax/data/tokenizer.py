"""Tokenizers behind one interface: ids, BERT special tokens and word starts.

Word starts drive whole-word masking: a SentencePiece piece starts a word when it
begins with '▁' or is a lone punctuation mark (ALBERT's rule).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import unicodedata
from typing import Iterable, Protocol, Sequence

import numpy as np
import sentencepiece as spm

from bertjax.errors import UserError

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
_SP_WORD_BOUNDARY = '\u2581'


class Tokenizer(Protocol):
  """What the rest of bertjax needs from a tokenizer (SentencePiece or WordPiece)."""
  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  special_V: np.ndarray     # bool: never masked
  word_start_V: np.ndarray  # bool: the piece starts a word

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


def encode_pair(tok: Tokenizer, a: Sequence[int], b: Sequence[int] | None,
                seq_len: int | None) -> tuple[list[int], list[int]]:
  """[CLS] a [SEP] (b [SEP]), truncated longest-first to seq_len (None: not truncated)
  as `transformers` does; returns (input_ids, token_type_ids) lists."""
  a, b = list(a), (list(b) if b is not None else None)
  if seq_len is not None:
    budget = seq_len - (3 if b is not None else 2)
    while len(a) + len(b or ()) > budget:
      if b is not None and len(b) > len(a):
        b.pop()
      else:
        a.pop()
  ids = [tok.cls_id, *a, tok.sep_id] + ([*b, tok.sep_id] if b is not None else [])
  types = [0] * (len(a) + 2) + [1] * (len(b) + 1 if b is not None else 0)
  return ids, types


def find(directory: str) -> Tokenizer | None:
  """The tokenizer saved in a workdir's `tokenizer/` directory, or None."""
  spm_path = os.path.join(directory, 'spm.model')
  if os.path.isfile(spm_path):
    return SentencePieceTokenizer(spm_path)
  vocab_path = os.path.join(directory, 'vocab.txt')
  if os.path.isfile(vocab_path):
    from bertjax.data.wordpiece import WordPieceTokenizer
    lower = True
    config_path = os.path.join(directory, 'tokenizer_config.json')
    if os.path.isfile(config_path):
      with open(config_path, encoding='utf-8') as f:
        lower = bool(json.load(f).get('do_lower_case', True))
    return WordPieceTokenizer(vocab_path, do_lower_case=lower)
  return None


def save(tok: Tokenizer, directory: str) -> None:
  """Writes `tok` into a workdir's `tokenizer/` directory, where `find` reads it."""
  os.makedirs(directory, exist_ok=True)
  if isinstance(tok, SentencePieceTokenizer):
    shutil.copyfile(tok.path, os.path.join(directory, 'spm.model'))
    return
  shutil.copyfile(tok.path, os.path.join(directory, 'vocab.txt'))
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump({'do_lower_case': tok.do_lower_case}, f)


def load(directory: str) -> Tokenizer:
  tok = find(directory)
  if tok is None:
    raise UserError(f'{directory} holds no tokenizer (spm.model or vocab.txt)')
  return tok


def _is_punctuation(piece: str) -> bool:
  return len(piece) == 1 and unicodedata.category(piece).startswith('P')


class SentencePieceTokenizer:
  """A SentencePiece model with [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4."""

  def __init__(self, model_path: str):
    if not os.path.isfile(model_path):
      raise UserError(f'tokenizer model {model_path!r} not found')
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
  os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
  tmp = out_path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(model.getvalue())
  os.replace(tmp, out_path)
  return SentencePieceTokenizer(out_path)
