"""UTF-8 text files as documents, each a list of sentences.

Files and globs may be local or URLs (`gs://bucket/corpus/*.txt`): both are matched
and read through epath (bertjax.storage).

`doc_mode` says what one document is: a file, a blank-line separated block, or a
line; sentences are lines, split again after terminal punctuation. Errors (no
match, a directory, bytes that are not UTF-8, no text) are one line each.
"""
from __future__ import annotations

import os
import re
from typing import Iterator

from bertjax import storage
from bertjax.errors import UserError

_SENTENCE_END = re.compile(r'(?<=[.!?])\s+')
DOC_MODES = ('file', 'blank_line', 'line')


def split_sentences(text: str) -> list[str]:
  """The sentences of a block of text: its lines, split after terminal punctuation."""
  return [s.strip() for line in text.splitlines() for s in _SENTENCE_END.split(line)
          if s.strip()]


def text_paths(pattern: str) -> list[str]:
  paths = [p for p in storage.glob(pattern) if storage.as_path(p).is_file()]
  if not paths and storage.as_path(pattern).is_dir():
    glob_hint = os.path.join(pattern, '*.txt')
    raise UserError(f'corpus {pattern!r} is a directory but not one `bertjax data prepare` '
                    f'wrote; for its text files use a glob, e.g. {glob_hint!r}')
  if not paths:
    raise UserError(f'corpus {pattern!r} matches no file; point the corpus (--corpus or '
                    '--config.data.corpus) at a text file or glob, "tfds:NAME", or '
                    '"embedded" for the built-in corpus')
  return paths


def read_text(path: str) -> str:
  try:
    return storage.as_path(path).read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text (byte {e.start}); convert it, e.g. '
                    f'iconv -f latin1 -t utf-8') from None


def iter_text_documents(pattern: str, doc_mode: str = 'blank_line') -> Iterator[list[str]]:
  """Documents one at a time, in file then text order, so builders can stream them."""
  if doc_mode not in DOC_MODES:
    raise UserError(f'doc_mode {doc_mode!r} is not one of {DOC_MODES}')
  for path in text_paths(pattern):
    text = read_text(path)
    if doc_mode == 'file':
      blocks = [text]
    elif doc_mode == 'blank_line':
      blocks = re.split(r'\n\s*\n', text)
    else:
      blocks = text.splitlines()
    for block in blocks:
      sentences = split_sentences(block)
      if sentences:
        yield sentences


def text_file_documents(pattern: str, doc_mode: str = 'blank_line') -> list[list[str]]:
  """Reads UTF-8 text files; `doc_mode` says what a document is (default: blank lines
  separate documents)."""
  documents = list(iter_text_documents(pattern, doc_mode))
  if not documents:
    raise UserError(f'corpus {pattern!r} holds no text; point the corpus at non-empty '
                    'UTF-8 files')
  return documents
