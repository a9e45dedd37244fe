"""A JSON-lines log (`metrics.jsonl`) that works where files cannot be appended.

GCS objects cannot be appended to, only replaced whole. So on a URL the log is a
directory of segments, `NAME/000000.jsonl`, `NAME/000001.jsonl`, ...: each flush
rewrites the current segment whole (one atomic object upload, so a reader sees it
before or after the flush, never torn), and a segment that reaches
`max_segment_bytes` is closed and the next one started. That bounds both the bytes
a flush uploads (one segment, not the whole history as rewriting a single file
would) and the number of objects (one per `max_segment_bytes`, not one per flush).
A run that resumes starts a new segment after the last, never touching old ones.

A local log stays the single appended `NAME.jsonl` that people `tail -f` and `jq`.
A directory that already holds segments (a workdir copied down from a bucket) keeps
using segments, so the order of records stays the order they were written.

`read` yields the records of either layout (the single file first: it can only be
older than segments next to it), so workdirs written before segments still read.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

from bertjax import storage
from bertjax.errors import UserError


def _segments(directory) -> list:
  if not directory.is_dir():
    return []
  found = [p for p in directory.iterdir() if p.name.endswith('.jsonl') and p.stem.isdigit()]
  return sorted(found, key=lambda p: int(p.stem))


class JsonlLog:
  """Writes one JSON object a line to `directory/NAME.jsonl` or `directory/NAME/`.

  `write` flushes a local file at once; on a URL it uploads at most every
  `flush_secs` seconds (call `flush` before a checkpoint so that the steps it
  covers are logged, and `close` at the end).
  """

  def __init__(self, directory: str | os.PathLike, name: str = 'metrics', *,
               flush_secs: float = 30.0, max_segment_bytes: int = 1 << 20):
    self._directory = storage.as_path(directory)
    self._segment_dir = self._directory / name
    self._flush_secs = flush_secs
    self._max_segment_bytes = max_segment_bytes
    self._segmented = storage.is_url(directory) or self._segment_dir.is_dir()
    if self._segmented:
      existing = _segments(self._segment_dir)
      self._index = int(existing[-1].stem) + 1 if existing else 0
      self._lines: list[str] = []
      self._size = 0
      self._dirty = False
      self._last_flush = time.monotonic()
      self._segment_dir.mkdir(parents=True, exist_ok=True)
    else:
      os.makedirs(self._directory, exist_ok=True)
      self._file = open(self._directory / f'{name}.jsonl', 'a', encoding='utf-8')

  def write(self, record: dict[str, Any]) -> None:
    line = json.dumps(record) + '\n'
    if not self._segmented:
      self._file.write(line)
      self._file.flush()
      return
    size = len(line.encode('utf-8'))
    if self._lines and self._size + size > self._max_segment_bytes:
      self.flush()
      self._index += 1
      self._lines, self._size = [], 0
    self._lines.append(line)
    self._size += size
    self._dirty = True
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def flush(self) -> None:
    if not self._segmented:
      self._file.flush()
      return
    if self._dirty:
      storage.write_atomic(self._segment_dir / f'{self._index:06d}.jsonl', ''.join(self._lines))
      self._dirty = False
    self._last_flush = time.monotonic()

  def close(self) -> None:
    if self._segmented:
      self.flush()
    else:
      self._file.close()

  def __enter__(self) -> JsonlLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def exists(directory: str | os.PathLike, name: str = 'metrics') -> bool:
  """Whether `directory` holds a log `name` in either layout."""
  directory = storage.as_path(directory)
  return (directory / f'{name}.jsonl').is_file() or bool(_segments(directory / name))


def read(directory: str | os.PathLike, name: str = 'metrics') -> Iterator[dict[str, Any]]:
  """The records of `directory`'s log in the order written, in either layout.

  A torn last line of the single file (a run killed mid-write) is skipped; a
  malformed line anywhere else is a UserError naming file and line.
  """
  directory = storage.as_path(directory)
  single = directory / f'{name}.jsonl'
  if single.is_file():
    yield from _records(single, torn_tail_ok=True)
  for segment in _segments(directory / name):
    yield from _records(segment, torn_tail_ok=False)


def _records(path, *, torn_tail_ok: bool) -> Iterator[dict[str, Any]]:
  lines = [line for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
  for i, line in enumerate(lines):
    try:
      yield json.loads(line)
    except json.JSONDecodeError:
      if torn_tail_ok and i == len(lines) - 1:
        return
      raise UserError(f'{path}:{i + 1}: not a JSON line ({line[:60]!r}): '
                      'the log is damaged; fix or remove that line') from None
