"""Fine-tuning task kinds -> their modules (see common.py for what each provides)."""
from __future__ import annotations

import importlib

from bertjax.errors import UserError

TASKS = {'classify': 'bertjax.tasks.classify', 'tag': 'bertjax.tasks.tag',
         'qa': 'bertjax.tasks.qa'}


def task_module(kind: str):
  if kind not in TASKS:
    raise UserError(f'unknown task kind {kind!r}; choose one of {sorted(TASKS)}')
  return importlib.import_module(TASKS[kind])
