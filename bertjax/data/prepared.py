"""Reading a corpus that `bertjax data prepare` wrote (see prepare.py for the writer).

A prepared directory holds:

  prepared.json                              the manifest: format, corpus, split
                                             settings, tokenizer fingerprint and
                                             vocab size, per-split counts and shards
  tokenizer/                                 a copy of the tokenizer used
  SPLIT.array_record-IIIII-of-NNNNN          one record a document (group_size 1,
                                             so grain's ArrayRecordDataSource can
                                             read any record directly)
  instances/                                 optional: instances built for one set of
                                             data settings (see instance_store.py)

A record is little-endian int32: `[S, len_1, ..., len_S, ids of sentence 1, ...,
ids of sentence S]`. Splits are read as stored, whatever rule picked them.

The directory may be a URL (`gs://`): the manifest and tokenizer are read through
epath, but the array_record reader opens only local files (on a URL it hangs), so
each host stages the shards it reads to its local disk first (storage.local_copy,
fetched once, again only when an object changes).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from array_record.python import array_record_module

from bertjax import storage
from bertjax.data import instance_store, tokenizer as tokenizer_lib
from bertjax.errors import UserError

MANIFEST = 'prepared.json'
FORMAT = 'bertjax-prepared'
VERSION = 1


def decode_record(record: bytes) -> list[np.ndarray]:
  values = np.frombuffer(record, dtype='<i4')
  n = int(values[0])
  ends = np.cumsum(values[1:1 + n])
  return np.split(values[1 + n:].astype(np.int32), ends[:-1])


def fingerprint(tok: tokenizer_lib.Tokenizer) -> str:
  """The identity of a tokenizer: its model or vocabulary file and its casing."""
  h = hashlib.sha256()
  with open(tok.path, 'rb') as f:
    h.update(f.read())
  h.update(repr(getattr(tok, 'do_lower_case', None)).encode())
  return h.hexdigest()


def is_prepared(path: str) -> bool:
  return (storage.as_path(path) / MANIFEST).is_file()


def read_manifest(out_dir: str) -> dict:
  if not is_prepared(out_dir):
    raise UserError(f'{out_dir} is not a prepared corpus (no {MANIFEST}); make one with '
                    '`bertjax data prepare --corpus ... --tokenizer DIR --out DIR`')
  manifest = json.loads((storage.as_path(out_dir) / MANIFEST).read_text())
  if manifest.get('format') != FORMAT or manifest.get('version') != VERSION:
    raise UserError(f'{out_dir} was prepared in another format; prepare it again')
  return manifest


def check_tokenizer(out_dir: str, tok: tokenizer_lib.Tokenizer) -> None:
  """Refuses `tok` unless `out_dir` was prepared with it: its ids would mean other
  pieces."""
  stored = read_manifest(out_dir)['tokenizer']
  if fingerprint(tok) != stored['fingerprint']:
    raise UserError(
        f'{out_dir} was prepared with another tokenizer ({stored["kind"]}, '
        f'vocab {stored["vocab_size"]}, from {stored["source"]}) than this run uses '
        f'(vocab {tok.vocab_size}); use the tokenizer in {os.path.join(out_dir, "tokenizer")} '
        'or prepare again')


def load_prepared(out_dir: str, split: str = 'train',
                  tok: tokenizer_lib.Tokenizer | None = None) -> list[list[np.ndarray]]:
  """The documents of a split as lists of int32 id arrays, one per sentence; with
  `tok`, first checks that the directory was prepared with it."""
  manifest = read_manifest(out_dir)
  if tok is not None:
    check_tokenizer(out_dir, tok)
  if split not in manifest['splits']:
    raise UserError(f'{out_dir} has no split {split!r}; it has {sorted(manifest["splits"])}')
  documents = []
  for shard in manifest['splits'][split]['shards']:
    reader = array_record_module.ArrayRecordReader(
        storage.local_copy(storage.as_path(out_dir) / shard))
    documents.extend(decode_record(r) for r in reader.read_all())
    reader.close()
  return documents


def prepared_tokenizer(out_dir: str) -> tokenizer_lib.Tokenizer:
  read_manifest(out_dir)
  return tokenizer_lib.load(storage.as_path(out_dir) / 'tokenizer')


def decoded_documents(out_dir: str) -> list[list[str]]:
  """All splits' documents as text again, for code that wants sentences as strings."""
  tok = prepared_tokenizer(out_dir)
  return [[tok.decode(s) for s in doc] for split in read_manifest(out_dir)['splits']
          for doc in load_prepared(out_dir, split)]


def stored_instances(out_dir: str, settings: dict):
  """(train rows, eval rows, most frequent training token) when `out_dir` stores
  instances built with exactly `settings` and an eval split, else None."""
  stored = read_manifest(out_dir).get('instances')
  if not stored or stored['settings'] != settings or 'eval' not in stored['splits']:
    return None
  directory = storage.local_copy(storage.as_path(out_dir) / 'instances')
  train, evaluation = (instance_store.InstanceSource(
      directory, stored['splits'][split]['shards'], settings['seq_len'])
                       for split in ('train', 'eval'))
  return train, evaluation, stored['most_frequent_token']
