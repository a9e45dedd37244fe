"""TensorBoard scalars to a local directory or a URL (`gs://...`).

tensorboardX's own gs:// writer is not used: without google-cloud-storage its
constructor raises ImportError and its `__del__` then fails with 'GCSRecordWriter'
object has no attribute 'buffer'; with it, against the emulator, the event file
kept only the first of six scalars, and `__del__` uploads again at exit, retrying
for 120 s when the endpoint is gone. Instead events
are written by tensorboardX's plain file writer into a local staging directory, and
each flush uploads the event file whole through epath (the same gcsfs client as the
rest of the workdir). An object upload is atomic and the file only grows, so
TensorBoard reading the bucket always sees a valid prefix of the events; a failed
upload loses nothing, the next flush sends the whole file again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

from bertjax import storage


class TensorBoardSink:
  """`write(step, scalars)` / `flush()` / `close()` onto `logdir`, local or URL.

  Each sink writes its own event file (a random suffix in its name), so a resumed
  run adds a file next to the earlier run's instead of replacing it. On a URL
  `write` uploads at most every `flush_secs` seconds; `flush` and `close` always do.
  """

  def __init__(self, logdir: str | os.PathLike, *, flush_secs: float = 30.0):
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._remote = storage.as_path(logdir) if storage.is_url(logdir) else None
    self._staging = tempfile.mkdtemp(prefix='bertjax-tensorboard-') if self._remote else None
    local_dir = self._staging or os.fspath(storage.as_path(logdir))
    self._writer = SummaryWriter(logdir=local_dir,
                                 filename_suffix=f'.{uuid.uuid4().hex[:8]}')
    self._local_dir = local_dir
    self._flush_secs = flush_secs
    self._last_upload = time.monotonic()
    self._uploaded_sizes: dict[str, int] = {}
    if self._remote is not None:
      self._remote.mkdir(parents=True, exist_ok=True)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(value), global_step=int(step))
    self._writer.flush()
    if self._remote is not None and time.monotonic() - self._last_upload >= self._flush_secs:
      self._upload()

  def flush(self) -> None:
    self._writer.flush()
    if self._remote is not None:
      self._upload()

  def close(self) -> None:
    self._writer.close()
    if self._remote is not None:
      self._upload()
      shutil.rmtree(self._staging, ignore_errors=True)

  def _upload(self) -> None:
    for name in sorted(os.listdir(self._local_dir)):
      local = os.path.join(self._local_dir, name)
      size = os.path.getsize(local)
      if self._uploaded_sizes.get(name) != size:
        with open(local, 'rb') as f:
          (self._remote / name).write_bytes(f.read())
        self._uploaded_sizes[name] = size
    self._last_upload = time.monotonic()

  def __enter__(self) -> TensorBoardSink:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
