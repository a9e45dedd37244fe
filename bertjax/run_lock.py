"""One run at a time on a workdir: WORKDIR/.lock names the run that holds it.

Two runs on one workdir would interleave their metrics and mix one's weights with the
other's tokenizer, so the second exits at once, naming the holder. The lock belongs to
the run, not to a process: process 0 of a multi-host run takes it and the others share
the outcome. The holder rewrites a heartbeat every HEARTBEAT_SECONDS; a lock whose
heartbeat is older than EXPIRES_SECONDS (its holder was SIGKILLed or its host lost),
or whose process is gone from this same host, is stale and taken over with a message.
`bertjax unlock --workdir W` breaks a lock deliberately.

Where the lock lives decides how it is made atomic. A local (or network) file is
linked into place (fails if one exists) and rewritten by rename. A file has no
compare-and-swap, so a heartbeat and a take-over of a stale lock both first claim the
very file they read with a hard link (`_LocalLockFile._claim`): one run alone takes a
stale lock over, and a holder judged stale but alive never overwrites the lock another
run took, unless it stalls for CLAIM_EXPIRES_SECONDS while holding a claim (the claim
is then dropped as abandoned). A `gs://` object is created with the precondition "no
generation yet" (ifGenerationMatch=0) and rewritten or deleted only if its generation
is still the one read, so of two runs creating or taking over the lock exactly one
wins, and a heartbeat never overwrites a lock another run took.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid

import jax
import numpy as np

from bertjax import storage, workdir as workdir_lib
from bertjax.errors import UserError

HEARTBEAT_SECONDS = 30.0
EXPIRES_SECONDS = 300.0
CLAIM_EXPIRES_SECONDS = 60.0  # see _LocalLockFile._drop_if_abandoned


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


class _LocalLockFile:
  """The lock as a local file. `read` gives (content, version): the version names the
  file read (device, inode and a digest of its content), so that removing it removes
  that file and not one another run has put in its place since."""

  def __init__(self, path: str):
    self.path = path

  def create(self, data: bytes) -> bool:
    # Written whole beside it, then linked into place (fails if it exists): another
    # run never reads a lock file that is still empty and takes it for a stale one.
    tmp = f'{self.path}.{uuid.uuid4().hex}.tmp'
    with open(tmp, 'wb') as f:
      f.write(data)
    try:
      os.link(tmp, self.path)
    except FileExistsError:
      return False
    finally:
      os.remove(tmp)
    return True

  def read(self) -> tuple[bytes | None, tuple | None]:
    try:
      with open(self.path, 'rb') as f:
        data, stat = f.read(), os.fstat(f.fileno())
    except FileNotFoundError:
      return None, None
    return data, (stat.st_dev, stat.st_ino, hashlib.sha256(data).hexdigest())

  def replace(self, data: bytes, version) -> bool:
    """Rewrites the lock file `read` returned as `version` (a heartbeat) if it is still
    the one in place: a holder judged stale and taken over does not overwrite the new
    holder's lock. It claims that file as `remove` does, so of a heartbeat and a
    take-over of one version exactly one goes on."""
    with self._claim(version) as claimed:
      if not claimed:
        return False
      tmp = f'{self.path}.{uuid.uuid4().hex}.tmp'
      with open(tmp, 'wb') as f:
        f.write(data)
      os.replace(tmp, self.path)
      return True

  def remove(self, version) -> bool:
    """Removes the lock file `read` returned as `version` if it is still the one in
    place. Of several runs removing one stale lock at once, one does; the others find
    the new holder's lock afterwards, never remove it.

    No system call removes a name only if it is a given file, so: the remover claims
    that file (`_claim`), then moves the lock aside and checks what it moved (a lock
    put in its place meanwhile, possible only once a claim was dropped as abandoned, is
    put back).
    """
    with self._claim(version) as claimed:
      if not claimed:
        return False
      aside = f'{self.path}.stale-{uuid.uuid4().hex}'
      try:
        os.rename(self.path, aside)
      except FileNotFoundError:
        return False
      try:
        if self._is(aside, version):
          return True
        with contextlib.suppress(FileExistsError):  # a new run took the free place first
          os.link(aside, self.path)
        return False
      finally:
        os.remove(aside)

  @contextlib.contextmanager
  def _claim(self, version):
    """Yields whether this process alone may change the lock file `version` names.

    The claim is a link to the lock named after that file: one link of several
    succeeds, and the claim must then be that file (the lock did not change after it
    was read). While it is held, no other heartbeat or take-over of that file goes on;
    one of a newer file cannot pass its own check.
    """
    claim = f'{self.path}.claim-{version[1]}-{version[2][:16]}'
    try:
      os.link(self.path, claim)
    except FileNotFoundError:
      yield False
      return
    except FileExistsError:
      self._drop_if_abandoned(claim)
      yield False
      return
    try:
      yield self._is(claim, version)
    finally:
      with contextlib.suppress(FileNotFoundError):  # dropped as abandoned meanwhile
        os.remove(claim)

  @staticmethod
  def _is(path: str, version) -> bool:
    with open(path, 'rb') as f:
      stat = os.fstat(f.fileno())
      return ((stat.st_dev, stat.st_ino) == version[:2]
              and hashlib.sha256(f.read()).hexdigest() == version[2])

  @staticmethod
  def _drop_if_abandoned(claim: str) -> None:
    """A claim outlives its take-over (milliseconds) only if its remover died then."""
    with contextlib.suppress(FileNotFoundError):
      if time.time() - os.stat(claim).st_ctime > CLAIM_EXPIRES_SECONDS:
        os.remove(claim)


class _GcsLockObject:
  """The lock as a GCS object, through google-cloud-storage (gcsfs's own dependency),
  whose calls take generation preconditions; it reads STORAGE_EMULATOR_HOST too."""

  def __init__(self, url: str):
    try:
      from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel
      from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise UserError(f'{url}: locking a gs:// workdir needs google-cloud-storage: '
                      "pip install 'bertjax[gcs]'") from None
    self._exceptions = exceptions
    parts = urllib.parse.urlsplit(url)
    # Objects need no project; the client wants one only for creating buckets.
    client = gcs.Client(project=os.environ.get('GOOGLE_CLOUD_PROJECT') or 'bertjax')
    self._blob = client.bucket(parts.netloc).blob(parts.path.lstrip('/'))
    self.path = url

  def create(self, data: bytes) -> bool:
    try:
      self._blob.upload_from_string(data, if_generation_match=0)
    except self._exceptions.PreconditionFailed:
      return False
    return True

  def read(self) -> tuple[bytes | None, int | None]:
    try:
      self._blob.reload()
      return self._blob.download_as_bytes(if_generation_match=self._blob.generation), \
          self._blob.generation
    except (self._exceptions.NotFound, self._exceptions.PreconditionFailed):
      return None, None

  def replace(self, data: bytes, version) -> bool:
    try:
      self._blob.upload_from_string(data, if_generation_match=version)
    except (self._exceptions.PreconditionFailed, self._exceptions.NotFound):
      return False
    return True

  def remove(self, version) -> bool:
    try:
      self._blob.delete(if_generation_match=version)
    except (self._exceptions.PreconditionFailed, self._exceptions.NotFound):
      return False
    return True


def _lock_file(workdir):
  """The lock's store; None for URLs other than gs://, which cannot be locked yet."""
  path = workdir_lib.path(workdir) / workdir_lib.LOCK
  if not storage.is_url(path):
    return _LocalLockFile(os.fspath(path))
  if urllib.parse.urlsplit(os.fspath(path)).scheme in ('gs', 'gcs'):
    return _GcsLockObject(os.fspath(path))
  return None


def _parse(data: bytes) -> Holder:
  """A lock file cut off mid-write counts as stale."""
  try:
    return Holder(**json.loads(data))
  except (ValueError, TypeError):
    return Holder('?', '?', -1, 'unknown', 0.0, 0.0)


def read_holder(workdir) -> Holder | None:
  """The run holding `workdir`, or None."""
  lock = _lock_file(workdir)
  data = None if lock is None else lock.read()[0]
  return None if data is None else _parse(data)


def _command_line() -> str:
  name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'python'
  return ' '.join(['bertjax' if name in ('bertjax', '__main__.py') else name, *sys.argv[1:]])


class RunLock:
  """Holds a workdir for one run: `with RunLock(workdir): ...`."""

  def __init__(self, workdir, command: str | None = None):
    self.workdir = workdir
    self._file = _lock_file(workdir)
    self.path = os.fspath(workdir_lib.path(workdir) / workdir_lib.LOCK)
    now = time.time()
    self.holder = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(),
                         command or _command_line(), now, now)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._held = False

  def _payload(self) -> bytes:
    return json.dumps(dataclasses.asdict(self.holder)).encode()

  def __enter__(self) -> 'RunLock':
    if self._file is None:
      logging.warning('%s is not locked: run locks work on local and gs:// workdirs; make '
                      'sure no other run uses it', self.workdir)
      return self
    error = None
    if jax.process_index() == 0:
      try:
        error = self._acquire()
      except (OSError, UserError) as e:  # one line, and the other processes learn of it
        error = str(e) if isinstance(e, UserError) else (
            f'cannot lock {self.workdir}: {e.strerror or e}')
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
    while not self._file.create(self._payload()):
      data, version = self._file.read()
      if data is None:
        continue  # released between our two looks
      other = _parse(data)
      if not other.is_stale():
        return (f'{self.workdir} is in use by {other.describe()}; wait for it to finish, '
                'use another --workdir, or if that run is dead run `bertjax unlock '
                f'--workdir {self.workdir}`')
      if self._file.remove(version):
        logging.warning('taking over %s from a run that is gone: %s', self.workdir,
                        other.describe())
      else:  # another run is taking it over, or it changed: look again in a moment
        time.sleep(0.01)
    return None

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        data, version = self._file.read()
      except OSError as e:  # a passing storage error: try again at the next beat
        logging.warning('could not refresh the lock on %s (%s); retrying', self.workdir, e)
        continue
      current = None if data is None else _parse(data)
      self.holder.heartbeat = time.time()
      if (current is None or current.run_id != self.holder.run_id
          or not self._file.replace(self._payload(), version)):
        logging.warning('the lock on %s was broken by another command; this run no '
                        'longer holds it', self.workdir)
        self._held = False
        return

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if not self._held:
      return
    data, version = self._file.read()
    if data is not None and _parse(data).run_id == self.holder.run_id:
      self._file.remove(version)


def break_lock(workdir, attempts: int = 5) -> Holder | None:
  """Removes the lock of `workdir` (`bertjax unlock`); returns whom it named, or None
  if it was not locked. A lock that changes between reading and removing it (a
  heartbeat, another unlock or take-over) is read again; if it keeps changing, nothing
  was removed, and that is a UserError."""
  lock = _lock_file(workdir)
  if lock is None:
    return None
  for attempt in range(attempts):
    data, version = lock.read()
    if data is None:
      return None
    if lock.remove(version):
      return _parse(data)
    time.sleep(0.05 * (attempt + 1))
  raise UserError(f'{workdir}: nothing was removed: the lock of {_parse(data).describe()} '
                  'changed after each read or another command is removing it; check that '
                  'its run has stopped and run `bertjax unlock` again')
