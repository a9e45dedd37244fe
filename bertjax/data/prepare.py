"""Writing a prepared corpus: tokenize once, sentence-split, into array_record.

Tokenizing a large corpus takes longer than a short training run, and every run
(and every host) would repeat it; `prepare` does it once, and training reads token
ids back without touching the tokenizer (prepared.py reads; it describes the
directory and the record format). Sentences that tokenize to nothing and documents
left empty are dropped, as the pipeline drops them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np
import tqdm
from array_record.python import array_record_module
from etils import epath

from bertjax import storage
from bertjax.data import corpus as corpus_lib, instance_store, instances, prepared
from bertjax.data.splits import split_indices
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError

DOCS_PER_SHARD = 65536
_WRITER_OPTIONS = 'group_size:1'
# Present while an upload to a URL is under way, or after one was cut off.
UPLOADING = 'prepare.uploading'


def encode_record(sentences: list[list[int]]) -> bytes:
  header = [len(sentences)] + [len(s) for s in sentences]
  flat = [i for s in sentences for i in s]
  return np.asarray(header + flat, dtype='<i4').tobytes()


def _encode(tok, sentences: list[str]) -> list[list[int]]:
  # One call a document: much faster than one a sentence, and spread over the cores.
  return [s for s in tok.encode_batch(sentences) if s]


class _ShardWriter:
  """Writes one split's records, starting a new shard every DOCS_PER_SHARD."""

  def __init__(self, directory: str, split: str):
    self.directory, self.split = directory, split
    self.paths, self.writer, self.in_shard = [], None, 0
    self.documents = self.sentences = self.tokens = 0

  def write(self, sentences: list[list[int]]):
    if self.writer is None or self.in_shard == DOCS_PER_SHARD:
      self._close_shard()
      self.paths.append(os.path.join(self.directory, f'{self.split}.part{len(self.paths)}'))
      self.writer = array_record_module.ArrayRecordWriter(self.paths[-1], _WRITER_OPTIONS)
    self.writer.write(encode_record(sentences))
    self.in_shard += 1
    self.documents += 1
    self.sentences += len(sentences)
    self.tokens += sum(len(s) for s in sentences)

  def _close_shard(self):
    if self.writer is not None:
      self.writer.close()
    self.in_shard = 0

  def finish(self) -> dict:
    """Closes the split, names its shards -IIIII-of-NNNNN, returns its manifest entry."""
    self._close_shard()
    shards = []
    for i, path in enumerate(self.paths):
      shards.append(f'{self.split}.array_record-{i:05d}-of-{len(self.paths):05d}')
      os.replace(path, os.path.join(self.directory, shards[-1]))
    return dict(documents=self.documents, sentences=self.sentences, tokens=self.tokens,
                shards=shards)


def prepare(corpus: str, out_dir: str, tokenizer_dir: str, *, doc_mode: str = 'blank_line',
            seed: int = 0, eval_fraction: float = 0.0, num_embedded: int = 4000,
            instance_settings: instances.InstanceSettings | None = None) -> dict:
  """Tokenizes `corpus` (any `data.corpus` string) into `out_dir`; returns the manifest.

  With `instance_settings` the instances are built too and stored under `instances/`
  (see instance_store.py), so training reads rows from disk instead of building them
  in every host's memory.

  With `eval_fraction`, the documents the pipeline's rule holds out
  (`splits.split_indices`) go to split 'eval' and the rest to 'train', each in corpus
  order. An earlier prepared directory at `out_dir` is replaced, other files are not.

  The directory is built on local disk (array_record writes only local files): beside
  `out_dir` and renamed into place when local, so it appears complete or not at all;
  in a temporary directory and uploaded when `out_dir` is a URL (see `_upload`).
  """
  out = storage.as_path(out_dir)
  if storage.is_url(out_dir):  # a wrong bucket or missing credentials: one line, now
    storage.check_writable(out_dir)
  if (out.exists() and not prepared.is_prepared(out_dir) and not (out / UPLOADING).exists()
      and (not out.is_dir() or any(out.iterdir()))):
    raise UserError(f'{out_dir} exists and is not a prepared corpus; choose a new --out')
  tok = tokenizer_lib.load(tokenizer_dir)
  documents = corpus_lib.load_documents(corpus, num_embedded=num_embedded, seed=seed,
                                        doc_mode=doc_mode)
  held_out = set(split_indices(len(documents), eval_fraction, seed)[1] if eval_fraction else ())
  if storage.is_url(out_dir):
    tmp = tempfile.mkdtemp(prefix='bertjax-prepare-')
  else:
    tmp = os.fspath(out).rstrip(os.sep) + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    os.makedirs(tmp)
  try:
    writers = {'train': _ShardWriter(tmp, 'train')}
    if held_out:
      writers['eval'] = _ShardWriter(tmp, 'eval')
    tokenized = {name: [] for name in writers}
    for i, doc in enumerate(tqdm.tqdm(documents, desc='tokenizing', unit='doc', disable=None)):
      sentences = _encode(tok, doc)
      if sentences:
        split = 'eval' if i in held_out else 'train'
        writers[split].write(sentences)
        if instance_settings:
          tokenized[split].append(sentences)
    counts = {name: w.finish() for name, w in writers.items()}
    if not counts['train']['documents']:
      raise UserError(f'corpus {corpus!r} tokenizes to nothing; check the text and tokenizer')
    tokenizer_lib.save(tok, os.path.join(tmp, 'tokenizer'))
    manifest = dict(
        format=prepared.FORMAT, version=prepared.VERSION,
        record='little-endian int32: [num_sentences, len_1..len_S, ids of sentence 1..S]',
        corpus=corpus, doc_mode=doc_mode, seed=seed, eval_fraction=eval_fraction,
        tokenizer=dict(kind=type(tok).__name__, fingerprint=prepared.fingerprint(tok),
                       vocab_size=tok.vocab_size,
                       source=os.fspath(storage.as_path(tokenizer_dir))),
        splits=counts)
    if instance_settings:
      manifest['instances'] = _write_instances(tokenized, tok, instance_settings, seed, tmp)
    with open(os.path.join(tmp, prepared.MANIFEST), 'w', encoding='utf-8') as f:
      json.dump(manifest, f, indent=2)
    if storage.is_url(out_dir):
      _upload(tmp, out)
    else:
      if os.path.exists(out):
        shutil.rmtree(out)
      os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def _upload(local_dir: str, out: epath.Path) -> None:
  """Puts the prepared directory `local_dir` at the URL `out`, which object storage
  cannot do in one rename: UPLOADING is written first and removed last, so a rerun
  after a cut-off upload may replace what it left; an earlier prepared corpus there
  loses its manifest before anything else, and the new manifest is uploaded last, so
  readers never take a mix of the two, or a part, as a prepared corpus."""
  (out / UPLOADING).write_text('bertjax data prepare is uploading here; a rerun replaces it\n')
  if (out / prepared.MANIFEST).exists():
    (out / prepared.MANIFEST).unlink()
  for old in out.iterdir():
    if old.name == UPLOADING:
      continue
    if old.is_dir():
      old.rmtree()
    else:
      old.unlink()
  storage.upload_tree(local_dir, out, last=(prepared.MANIFEST,))
  (out / UPLOADING).unlink()


def _write_instances(tokenized, tok, settings: instances.InstanceSettings, seed: int,
                     directory: str) -> dict:
  """Builds and writes every split's instances; returns the manifest's 'instances'."""
  directory = os.path.join(directory, 'instances')
  os.makedirs(directory)
  entry = dict(settings=dataclasses.asdict(settings), splits={})
  for split, documents in tokenized.items():
    table = instances.make_table(documents, tok, settings, seed + (split == 'eval'))
    entry['splits'][split] = dict(rows=len(table['input_ids']),
                                  shards=instance_store.write(table, directory, split))
    if split == 'train':
      entry['most_frequent_token'] = instances.most_frequent_token(table, tok)
  return entry
