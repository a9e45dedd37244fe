"""One run at a time on a workdir: WORKDIR/.lock names the run that holds it.

Two runs on one workdir would interleave their metrics and mix one's weights with the
other's tokenizer, so the second exits at once, naming the holder. The lock belongs to
the run, not to a process: process 0 of a multi-host run takes it and the others share
the outcome. The holder rewrites a heartbeat every HEARTBEAT_SECONDS; a lock whose
heartbeat is older than EXPIRES_SECONDS (its holder was SIGKILLed or its host lost),
or whose process is gone from this same host, is stale and taken over with a message.
`bertjax unlock --workdir W` breaks a lock deliberately.

The lock file is created with O_CREAT|O_EXCL and replaced by rename, both atomic on a
local or network file system.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np

from bertjax import storage, workdir as workdir_lib
from bertjax.errors import UserError

HEARTBEAT_SECONDS = 30.0
EXPIRES_SECONDS = 300.0


@dataclasses.dataclass
class Holder:
  run_id: str
  host: str
  pid: int
  command: str
  started: float
  heartbeat: float

  def describe(self, now: float | None = None) -> str:
    now = time.time() if now is None else now
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))
    return (f'`{self.command}` (pid {self.pid} on {self.host}, started {started}, last '
            f'heartbeat {max(0, now - self.heartbeat):.0f} s ago)')

  def is_stale(self, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if self.host == socket.gethostname() and not _process_alive(self.pid):
      return True
    return now - self.heartbeat > EXPIRES_SECONDS


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:  # a killed child that nobody has reaped yet is a zombie: gone all the same
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except (OSError, IndexError):
    return True


def _lock_path(workdir) -> str:
  return os.fspath(workdir_lib.path(workdir) / workdir_lib.LOCK)


def read_holder(workdir) -> Holder | None:
  """The run holding `workdir`, or None. A lock file cut off mid-write counts as stale."""
  try:
    with open(_lock_path(workdir), encoding='utf-8') as f:
      return Holder(**json.load(f))
  except FileNotFoundError:
    return None
  except (ValueError, TypeError):
    return Holder('?', '?', -1, 'unknown', 0.0, 0.0)


def _create(path: str, holder: Holder) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w', encoding='utf-8') as f:
    json.dump(dataclasses.asdict(holder), f)
  return True


def _set_aside(path: str) -> bool:
  """Moves a stale lock out of the way; of two runs taking it over, one wins."""
  try:
    os.rename(path, f'{path}.stale-{uuid.uuid4().hex}')
  except FileNotFoundError:
    return False
  return True


def _remove_set_aside(path: str) -> None:
  directory, name = os.path.split(path)
  for entry in os.listdir(directory):
    if entry.startswith(name + '.stale-'):
      try:
        os.remove(os.path.join(directory, entry))
      except FileNotFoundError:
        pass


def _command_line() -> str:
  name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'
  return ' '.join(['bertjax' if name in ('bertjax', '__main__.py') else name, *sys.argv[1:]])


class RunLock:
  """Holds a workdir for one run: `with RunLock(workdir): ...`."""

  def __init__(self, workdir, command: str | None = None):
    self.workdir = workdir
    self.path = _lock_path(workdir)
    now = time.time()
    self.holder = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(),
                         command or _command_line(), now, now)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._held = False

  def __enter__(self) -> 'RunLock':
    if storage.is_url(workdir_lib.path(self.workdir)):
      logging.warning('%s is not locked: run locks on URL workdirs are not supported '
                      'yet; make sure no other run uses it', self.workdir)
      return self
    error = self._acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if not ok and error is None:
        error = (f'{self.workdir} is held by another run (process 0 says which); wait '
                 'for it to finish or use another --workdir')
    if error:
      raise UserError(error)
    if jax.process_index() == 0:
      self._held = True
      self._thread = threading.Thread(target=self._beat, name='bertjax-lock-heartbeat',
                                      daemon=True)
      self._thread.start()
    return self

  def _acquire(self) -> str | None:
    while not _create(self.path, self.holder):
      other = read_holder(self.workdir)
      if other is None:
        continue  # released between our two looks
      if not other.is_stale():
        return (f'{self.workdir} is in use by {other.describe()}; wait for it to finish, '
                'use another --workdir, or if that run is dead run `bertjax unlock '
                f'--workdir {self.workdir}`')
      if _set_aside(self.path):
        logging.warning('taking over %s from a run that is gone: %s', self.workdir,
                        other.describe())
        _remove_set_aside(self.path)
    return None

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      current = read_holder(self.workdir)
      if current is None or current.run_id != self.holder.run_id:
        logging.warning('the lock on %s was broken by another command; this run no '
                        'longer holds it', self.workdir)
        self._held = False
        return
      self.holder.heartbeat = time.time()
      tmp = f'{self.path}.{self.holder.run_id}.tmp'
      with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(dataclasses.asdict(self.holder), f)
      os.replace(tmp, self.path)

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    current = read_holder(self.workdir)
    if self._held and current is not None and current.run_id == self.holder.run_id:
      os.remove(self.path)


def break_lock(workdir) -> Holder | None:
  """Removes the lock of `workdir` (`bertjax unlock`); returns whom it named."""
  holder = read_holder(workdir)
  if holder is not None:
    try:
      os.remove(_lock_path(workdir))
    except FileNotFoundError:
      pass
  return holder
