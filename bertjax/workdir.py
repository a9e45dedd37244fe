"""The workdir contract: where each file of a run lives, and how it is written.

    WORKDIR/config.json     the resolved config (`bertjax import` writes one too)
    WORKDIR/tokenizer/      the run's vocabulary (spm.model, or vocab.txt + tokenizer_config.json)
    WORKDIR/checkpoints/N/  orbax checkpoints (train state and data iterator, or params only)
    WORKDIR/task.json       fine-tuning: head kind and label names
    WORKDIR/best/N/         fine-tuning: the weights with the best task metric so far
    WORKDIR/best.json       ... and that evaluation's metrics
    WORKDIR/metrics.jsonl   one JSON object a logged step (on object storage, which
                            cannot append: WORKDIR/metrics/NNNNNN.jsonl segments, see
                            jsonl_log.py); WORKDIR/tensorboard/ the same
    WORKDIR/profile/        `--profile` traces
    WORKDIR/.lock           the run that holds the workdir (see run_lock.py)

Paths go through `etils.epath` (storage.as_path), so a workdir may be a local
directory or a URL such as `gs://bucket/run`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid

import jax
from etils import epath

from bertjax import config_lib, jsonl_log, reporting, storage
from bertjax.errors import UserError

CONFIG = 'config.json'
TOKENIZER = 'tokenizer'
CHECKPOINTS = 'checkpoints'
TASK = 'task.json'
BEST = 'best'
BEST_METRICS = 'best.json'
METRICS = reporting.METRICS_LOG  # the log's name: see has_metrics / jsonl_log.read
TENSORBOARD = reporting.TENSORBOARD
PROFILE = 'profile'
LOCK = '.lock'


def path(workdir: str | os.PathLike) -> epath.Path:
  """The workdir as an absolute epath (URLs such as gs:// stay as they are)."""
  return storage.as_path(workdir)


def create(workdir: str | os.PathLike) -> epath.Path:
  """Makes sure the workdir exists and can be written; one line if it cannot (on a
  URL: a bucket that does not exist, no credentials, an unreachable endpoint)."""
  p = path(workdir)
  if storage.is_url(p):
    storage.check_writable(p)
    return p
  if p.exists() and not p.is_dir():
    raise UserError(f'--workdir {workdir} is a file, not a directory; choose a directory')
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f'.write-test-{uuid.uuid4().hex}'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise UserError(f'cannot write to --workdir {workdir}: {e.strerror or e}; choose a '
                    'directory you can write to') from None
  return p


def has_metrics(workdir: str | os.PathLike) -> bool:
  """Whether a run has logged a step here (metrics.jsonl or its segments)."""
  return jsonl_log.exists(path(workdir), METRICS)


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The workdir's logged records, oldest first, in either layout."""
  return list(jsonl_log.read(path(workdir), METRICS))


def started(workdir: str | os.PathLike) -> bool:
  """Whether a run has trained in this workdir (a checkpoint or a logged step)."""
  return has_checkpoints(workdir) or has_metrics(workdir)


def has_checkpoints(workdir: str | os.PathLike, subdir: str = CHECKPOINTS) -> bool:
  d = path(workdir) / subdir
  return d.is_dir() and any(c.name.isdigit() for c in d.iterdir())


def is_workdir(p: str | os.PathLike) -> bool:
  """A bertjax workdir (as opposed to a Hugging Face model directory)."""
  p = path(p)
  return (p / CONFIG).exists() and (p / CHECKPOINTS).is_dir()


def is_finetuned(workdir: str | os.PathLike) -> bool:
  return (path(workdir) / TASK).exists()


def read_json(target: epath.Path) -> dict:
  try:
    return json.loads(epath.Path(target).read_text())
  except json.JSONDecodeError as e:
    raise UserError(f'{target} is not valid JSON ({e.msg}, line {e.lineno}); restore it '
                    'or use a new --workdir') from None


@dataclasses.dataclass
class TaskInfo:
  """What a fine-tuned workdir holds: the task, its head kind and label names."""
  kind: str               # classify, tag or qa
  model_kind: str         # the heads.build kind
  label_names: tuple[str, ...]
  num_labels: int

  @classmethod
  def read(cls, workdir: str | os.PathLike) -> 'TaskInfo':
    d = read_json(path(workdir) / TASK)
    return cls(d['kind'], d['model_kind'], tuple(d['label_names']), d['num_labels'])

  def write(self, workdir: str | os.PathLike) -> None:
    if jax.process_index() != 0:
      return
    storage.write_atomic(path(workdir) / TASK, json.dumps(dataclasses.asdict(self), indent=2))


def check_config(config, workdir, fixed_keys) -> None:
  """Refuses to go on in a workdir that trained with other `fixed_keys` (model, data,
  seed...). A workdir made by `bertjax import` fixes the architecture and tokenizer:
  the experiment's own `model` and `data.tokenizer` give way to the imported ones."""
  target = path(workdir) / CONFIG
  if not target.exists():
    return
  old = read_json(target)
  if ('task' in old) != ('task' in config):
    kinds = ('a fine-tuning', 'a pre-training') if 'task' in old else ('a pre-training',
                                                                       'a fine-tuning')
    raise UserError(f'{workdir} is {kinds[0]} workdir but the config is {kinds[1]} one; use '
                    'a new --workdir (fine-tune from this one with --config.init)')
  if old.get('init') and not config.init:
    with config.unlocked():
      config.init = old['init']
      config.model = config_lib.ConfigDict(old['model'])
      config.data.tokenizer = config_lib.ConfigDict(old['data']['tokenizer'])
    reporting.log(f'{workdir} was imported from {old["init"]}: training its '
                  f'{old["model"]["num_layers"]}-layer, {old["model"]["hidden_size"]}-wide '
                  'model with its tokenizer')
  if not has_metrics(workdir):  # an import's step-0 weights fix nothing more
    return
  new = json.loads(config_lib.to_json(config))
  for key in fixed_keys:
    a, b = old, new
    for part in key.split('.'):
      a, b = (a or {}).get(part), (b or {}).get(part)
    if a != b and not (a is None and not b):  # a key newer than the workdir, left unset
      raise UserError(f'{workdir} was trained with {key}={a}, but the config says {b}; '
                      'use a new --workdir, or the original config to resume')


def write_config(config, workdir) -> None:
  """Records the resolved config, once everything derived from it has been checked."""
  if jax.process_index() == 0:
    storage.write_atomic(path(workdir) / CONFIG, config_lib.to_json(config))
