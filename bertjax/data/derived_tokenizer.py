"""The tokenizer a pre-training run derives into WORKDIR/tokenizer, and its record.

The pipeline trains a SentencePiece model on the corpus, or copies the tokenizer of
a prepared corpus, and writes beside it `derived_from.json`: the settings it was
derived from, named as config keys. A later run on the workdir compares them with
its own: a difference is refused once training has started there (checkpoints or
metrics.jsonl exist), and before that the stale tokenizer (left by a run that failed
early) is replaced, so a corrected re-run never trains on the old corpus's
vocabulary. A tokenizer without the record (imported, adopted from `init`, or
written before records existed) is trusted as it is. The directory may be local or a
URL (`gs://`): files go through epath.
"""
from __future__ import annotations

import json
from typing import Callable

import jax

from bertjax import jsonl_log, reporting, storage
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError

RECORD = 'derived_from.json'
# What a derived tokenizer may have written (tokenizer.save, train_sentencepiece):
# removed before a stale one is replaced, so two models never sit side by side.
_TOKENIZER_FILES = ('spm.model', 'vocab.txt', 'tokenizer_config.json')


def trained_from(data_cfg, seed: int) -> dict:
  """What a tokenizer trained on `data_cfg.corpus` depends on: the corpus (with the
  settings that shape its documents) and the tokenizer settings."""
  # The seed and eval_fraction pick the training split it is trained on.
  record = {'data.corpus': data_cfg.corpus, 'data.eval_fraction': data_cfg.eval_fraction,
            'seed': seed}
  if data_cfg.corpus == 'embedded':
    record['data.embedded_documents'] = data_cfg.embedded_documents
  elif not data_cfg.corpus.startswith('tfds:'):
    record['data.doc_mode'] = data_cfg.doc_mode
  for key in ('kind', 'vocab_size', 'model_type'):
    record[f'data.tokenizer.{key}'] = data_cfg.tokenizer[key]
  return record


def copied_from(prepared_dir: str, fingerprint: str) -> dict:
  """What a tokenizer copied from a prepared corpus depends on."""
  return {'data.corpus': prepared_dir, 'prepared tokenizer fingerprint': fingerprint}


def training_started(workdir: str) -> bool:
  checkpoints = storage.as_path(workdir) / 'checkpoints'
  return (jsonl_log.exists(workdir, reporting.METRICS_LOG)
          or (checkpoints.is_dir() and any(True for _ in checkpoints.iterdir())))


def read_record(directory: str) -> dict | None:
  path = storage.as_path(directory) / RECORD
  if not path.is_file():
    return None
  return json.loads(path.read_text())


def _difference(old: dict, new: dict) -> str | None:
  """The first key (in the order `new` lists them) whose values differ."""
  for key in [*new, *(k for k in old if k not in new)]:
    if old.get(key) != new.get(key):
      return key
  return None


def ensure(directory: str, wanted: dict, *, started: bool, make: Callable[[str], None],
           cannot_make: str | None = None) -> tokenizer_lib.Tokenizer:
  """The tokenizer in `directory` derived from `wanted`; `make(directory)` writes it
  (process 0 only) when there is none or a stale one a run that never trained left.
  `cannot_make`, if given, is the error when one would have to be made.

  Every process reads the directory before process 0 writes, so all decide alike.
  """
  existing = tokenizer_lib.find(directory)
  record = read_record(directory) if existing is not None else None
  key = _difference(record, wanted) if record is not None else None
  if key is not None and started:
    raise UserError(
        f'{directory} was derived with {key}={record.get(key)!r}, but the config says '
        f'{wanted.get(key)!r}, and training has started in this workdir; use a new '
        '--workdir (or the original setting to resume)')
  if cannot_make and (existing is None or key is not None):
    raise UserError(cannot_make)
  sync('tokenizer read')
  if jax.process_index() == 0 and (existing is None or key is not None):
    if key is not None:
      reporting.log(f'replacing {directory}: it was derived with {key}='
                    f'{record.get(key)!r}, the config says {wanted.get(key)!r}, and no '
                    'training has happened in this workdir')
      remove(directory)
    storage.as_path(directory).mkdir(parents=True, exist_ok=True)
    # The record first: a run cut off before the tokenizer exists leaves a record
    # alone, which the next run treats as no tokenizer at all.
    storage.write_atomic(storage.as_path(directory) / RECORD, json.dumps(wanted, indent=2))
    make(directory)
  sync('tokenizer')
  return tokenizer_lib.load(directory)


def remove(directory: str) -> None:
  """Removes a tokenizer and its record (what `ensure` and `tokenizer.save` write)."""
  for name in (*_TOKENIZER_FILES, RECORD):
    if (storage.as_path(directory) / name).exists():
      (storage.as_path(directory) / name).unlink()


def sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
