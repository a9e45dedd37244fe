"""What every bertjax tokenizer shares: BERT's special tokens, the interface, the
[CLS] A [SEP] (B [SEP]) layout and the reading of special tokens written in text.

The SentencePiece and WordPiece modules import this one and nothing of each other.
"""
from __future__ import annotations

import re
from typing import Protocol, Sequence

import numpy as np

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
_LITERAL_SPECIAL = re.compile('(' + '|'.join(map(re.escape, SPECIAL_TOKENS)) + ')')


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

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, where a '[MASK]' written in it is plain text (see
    encode_with_special_tokens)."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text, in one call (faster than one call a text)."""

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


def encode_with_special_tokens(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
  """`tok.encode_batch`, except that [PAD] [UNK] [CLS] [SEP] [MASK] written in a text
  (case and all) become their ids, as `transformers` tokenizers read them; the text
  around them is encoded on its own, as `tokenizers` does around its added tokens.

  For user-facing input such as fill-mask prompts; corpora keep `tok.encode`, so that
  a text quoting '[SEP]' cannot forge a segment boundary in training data.
  """
  special_id = dict(zip(SPECIAL_TOKENS, (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id,
                                         tok.mask_id)))
  # re.split with a group alternates plain text (even places) and special tokens (odd).
  parts = [_LITERAL_SPECIAL.split(text) for text in texts]
  plain_ids = iter(tok.encode_batch([p for text_parts in parts for p in text_parts[::2]]))
  encoded = []
  for text_parts in parts:
    ids = []
    for i, part in enumerate(text_parts):
      ids.extend([special_id[part]] if i % 2 else next(plain_ids))
    encoded.append(ids)
  return encoded
