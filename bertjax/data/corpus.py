"""The corpus a `data.corpus` string names, as a list of documents (lists of sentences).

'embedded' is the generated world (embedded.py); 'tfds:NAME[/CONFIG][:SPLIT]' a
prepared tensorflow-datasets dataset (tfds_source.py); a directory written by
`bertjax data prepare` is decoded back to text (prepared.py); anything else is a
text-file glob (text_files.py). This module only dispatches.
"""
from __future__ import annotations

from bertjax.data import prepared, tfds_source
from bertjax.data.embedded import embedded_documents
from bertjax.data.text_files import text_file_documents
from bertjax.errors import UserError


def load_documents(corpus: str, *, num_embedded: int, seed: int,
                   doc_mode: str = 'blank_line') -> list[list[str]]:
  """The corpus named by `data.corpus`: 'embedded' (`num_embedded` documents from
  `seed`), 'tfds:...', a prepared directory (all splits), or text files read with
  `doc_mode`."""
  if not corpus:
    raise UserError('no corpus is set: pass --config.data.corpus=\'/path/*.txt\' (UTF-8 '
                    'text, documents separated by blank lines), "tfds:NAME" or "embedded"')
  if corpus == 'embedded':
    return embedded_documents(num_embedded, seed)
  if corpus.startswith('tfds:'):
    return tfds_source.tfds_documents(corpus[len('tfds:'):])
  if prepared.is_prepared(corpus):
    return prepared.decoded_documents(corpus)
  return text_file_documents(corpus, doc_mode)
