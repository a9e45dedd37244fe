"""What a run starts from when `config.init` names trained weights.

A bertjax workdir (pre-trained or fine-tuned: phase 1 for phase 2, or the encoder to
fine-tune) or a Hugging Face directory fixes three things of the run: its
architecture (`adopt_architecture`), its tokenizer (`adopt_tokenizer`, a copy in
WORKDIR/tokenizer with a record of where it came from) and its first params
(`initial_params`, restored onto the run's shardings; holes are refused). Resuming the
workdir's own checkpoint comes before all this: see loop.restore_or_start.
"""
from __future__ import annotations

import json
import os

import jax

from bertjax import reporting, storage, weights, workdir as workdir_lib
from bertjax.data import derived_tokenizer, tokenizer as tokenizer_lib
from bertjax.errors import UserError

ARCHITECTURE_KEYS = ('num_layers', 'hidden_size', 'num_heads', 'intermediate_size',
                     'max_position_embeddings', 'type_vocab_size', 'layer_norm_eps')
ADOPTED_RECORD = 'adopted_from.json'  # beside a tokenizer copied from `init`


def check_source(init: str) -> None:
  if not (workdir_lib.is_workdir(init) or (storage.as_path(init) / 'config.json').is_file()):
    raise UserError(f'init={init!r} is neither a bertjax workdir nor a Hugging Face model '
                    'directory; point --config.init at one')


def adopt_architecture(config) -> None:
  """Weights fix the architecture: take it from `config.init` (dropout, dtype and
  attention implementation stay the experiment's)."""
  check_source(config.init)
  source = weights.source_model_config(config.init)
  for key in ARCHITECTURE_KEYS:
    config.model[key] = getattr(source, key)


def adopt_tokenizer(init: str, workdir: str) -> tokenizer_lib.Tokenizer:
  """A run that starts from other weights must use their tokenizer: WORKDIR/tokenizer
  becomes a copy of it. One that a failed earlier run left there (from another `init`,
  or trained on the corpus) is replaced before training starts and refused after."""
  directory = os.fspath(workdir_lib.path(workdir) / workdir_lib.TOKENIZER)
  wanted = {'init': os.fspath(workdir_lib.path(init))}
  record_path = workdir_lib.path(directory) / ADOPTED_RECORD
  adopted = workdir_lib.read_json(record_path) if record_path.is_file() else None
  derived = derived_tokenizer.read_record(directory)
  existing = tokenizer_lib.find(directory)
  # Every process decides on what it read before process 0 may write: all decide alike.
  derived_tokenizer.sync('tokenizer read')
  if existing is not None and (adopted == wanted or (adopted is None and derived is None)):
    return existing  # ours, or from before records were kept: trusted as it is
  if existing is not None:
    came_from = adopted['init'] if adopted else f'training on {derived.get("data.corpus")}'
    if workdir_lib.started(workdir):
      raise UserError(f'{directory} came from {came_from}, but init={init}, and training has '
                      'started in this workdir; use a new --workdir (or the original init)')
    reporting.log(f'replacing {directory} (it came from {came_from}; no training has '
                  f'happened in this workdir) with the tokenizer of {init}')
  if jax.process_index() == 0:
    derived_tokenizer.remove(directory)
    if record_path.exists():
      record_path.unlink()
    tokenizer_lib.save(weights.open_tokenizer(init), directory)
    storage.write_atomic(record_path, json.dumps(wanted))
  derived_tokenizer.sync('tokenizer adopted')
  return tokenizer_lib.load(directory)


def initial_params(init: str, fresh, kind: str, num_labels: int = 2):
  """`fresh` (the run's freshly initialised params, placed on its mesh) with the
  weights of `init` put in: the encoder, and the head where `init` has one of the
  same kind, straight onto the params' shardings (each process reads what its
  devices hold; no weight passes through one host, so a run across processes starts
  the same way): a bertjax workdir's checkpoint through orbax, a Hugging Face
  directory's model.safetensors slice by slice."""
  if workdir_lib.is_workdir(init):
    return weights.restore_sharded(init, fresh, kind, num_labels)[0]
  return weights.place_hf(init, fresh, kind, num_labels)[0]
