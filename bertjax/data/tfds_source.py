"""Prepared tensorflow-datasets datasets, read as `tfds.data_source` reads them.

A spec is `NAME[/CONFIG][:SPLIT]`, prepared as array_record under TFDS_DATA_DIR
(e.g. by `bertjax data tfds`); it is opened from its files, never downloaded, with
no TensorFlow and with random access. As a corpus, its text feature ('text' or
'content' if present, else the first by name) gives the documents.
"""
from __future__ import annotations

import os
from typing import Iterator

from bertjax.data.text_files import split_sentences
from bertjax.errors import UserError


def _text_feature(features, name: str) -> str:
  from tensorflow_datasets import features as tfds_features
  texts = sorted(k for k, f in features.items() if isinstance(f, tfds_features.Text))
  for preferred in ('text', 'content'):
    if preferred in texts:
      return preferred
  if not texts:
    raise UserError(f'tfds dataset {name} has no Text feature (it has {sorted(features)}); '
                    'a corpus needs text')
  return texts[0]


def open_tfds(spec: str, default_split: str = 'train'):
  """(source, features, name, split) for `NAME[/CONFIG][:SPLIT]` prepared as
  array_record under TFDS_DATA_DIR, opened as `tfds.data_source` opens it (builder,
  then `as_data_source`) but never downloading: no TensorFlow, random access."""
  import tensorflow_datasets as tfds
  name, _, split = spec.partition(':')
  split = split or default_split
  data_dir = os.environ.get('TFDS_DATA_DIR') or None
  where = data_dir or '~/tensorflow_datasets (set TFDS_DATA_DIR to look elsewhere)'
  how = (f'prepare it first, e.g. `tfds build {name} --data_dir DIR '
         '--file_format=array_record` on a machine with its dependencies, then set '
         'TFDS_DATA_DIR=DIR; or use local files')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'tfds dataset {name!r} is not prepared in {where}; {how}') from None
  except Exception as e:  # tfds wraps a missing config or a builder's failure
    detail = str(e).strip().splitlines()[0][:200]
    raise UserError(f'tfds dataset {name!r} cannot be opened from {where} ({detail}); '
                    f'{how}') from None
  if not builder.is_prepared():
    raise UserError(f'tfds dataset {name!r} is not prepared in {where}; {how}')
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise UserError(f'tfds dataset {name!r} in {builder.data_dir} is stored as '
                    f'{builder.info.file_format.value}; tfds.data_source reads array_record '
                    f'only: rebuild it with --file_format=array_record')
  if split.split('[')[0] not in builder.info.splits:
    raise UserError(f'tfds dataset {name!r} has no split {split!r}; it has '
                    f'{sorted(builder.info.splits)}')
  return builder.as_data_source(split=split), builder.info.features, name, split


def tfds_examples(spec: str, default_split: str = 'train') -> Iterator[dict]:
  """The examples of a prepared tfds split, in order, with a progress bar; text
  features come as bytes (decode them)."""
  import tqdm
  source, _, name, split = open_tfds(spec, default_split)
  chunk = 1024
  with tqdm.tqdm(total=len(source), desc=f'reading {name}:{split}', unit='ex',
                 disable=None) as bar:
    for start in range(0, len(source), chunk):
      examples = source.__getitems__(range(start, min(start + chunk, len(source))))
      yield from examples
      bar.update(len(examples))


def tfds_documents(spec: str) -> list[list[str]]:
  """A prepared tfds dataset's text feature as documents (see `open_tfds`)."""
  _, features, name, split = open_tfds(spec)
  field = _text_feature(features, name)
  documents = []
  for example in tfds_examples(spec):
    text = example[field]
    sentences = split_sentences(text.decode('utf-8') if isinstance(text, bytes) else text)
    if sentences:
      documents.append(sentences)
  if not documents:
    raise UserError(f'tfds dataset {name!r} split {split!r} holds no text')
  return documents
