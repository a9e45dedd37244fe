"""Pre-built instances on disk, read a few rows at a time: the pod-scale input path.

`bertjax data prepare --seq_len N` writes each split's instances (fixed-length rows,
as `instances.make_table` builds them) into array_record shards, one record a row:
little-endian int32 `[input_ids L, token_type_ids L, attention_mask L, position_ids L,
nsp_label]`. `InstanceSource` reads rows by index (array_record's random
access), so each process touches only the rows of its own share of
each batch, and no host holds the corpus in memory. `InMemoryInstances` gives a
table built on the fly the same interface.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from array_record.python import array_record_module

_FIELDS = ('input_ids', 'token_type_ids', 'attention_mask', 'position_ids')
ROWS_PER_SHARD = 1 << 18


class InMemoryInstances:
  """An instance table (dict of arrays) behind `len` and `rows(indices)`."""

  def __init__(self, table: dict[str, np.ndarray]):
    self.table = table

  def __len__(self) -> int:
    return len(self.table['input_ids'])

  def rows(self, indices) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.table.items()}


class InstanceSource:
  """Instances of one prepared split, read from array_record shards.

  One reader a shard, opened on first use and kept (grain's ArrayRecordDataSource
  starts a thread pool on every read of several rows, which costs more than the
  read); a batch of rows is one `read` call per shard it touches.
  """

  def __init__(self, directory: str, shards: list[str], seq_len: int):
    self.seq_len = seq_len
    self.paths = [os.path.join(directory, s) for s in shards]
    counts = []
    for path in self.paths:
      reader = array_record_module.ArrayRecordReader(path)
      counts.append(reader.num_records())
      reader.close()
    self.ends = np.cumsum(counts)
    self._readers = [None] * len(self.paths)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def __getstate__(self):  # worker processes open their own readers
    return dict(self.__dict__, _readers=[None] * len(self.paths), _lock=None)

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def _reader(self, shard: int):
    with self._lock:
      if self._readers[shard] is None:
        # Rows are read at random, each a few hundred bytes compressed: no read-ahead,
        # and a small buffer reads little beyond the row.
        self._readers[shard] = array_record_module.ArrayRecordReader(
            self.paths[shard], options='readahead_buffer_size:0', file_reader_buffer_size=4096)
      return self._readers[shard]

  def rows(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64).reshape(-1)
    if len(indices) and not 0 <= indices.min() <= indices.max() < len(self):
      raise IndexError(f'instance indices out of range [0, {len(self)})')
    length = self.seq_len
    flat = np.empty((len(indices), len(_FIELDS) * length + 1), '<i4')
    shard_of = np.searchsorted(self.ends, indices, side='right')
    for shard in np.unique(shard_of).tolist():
      at = np.flatnonzero(shard_of == shard)
      first = int(self.ends[shard - 1]) if shard else 0
      records = self._reader(shard).read((indices[at] - first).tolist())
      flat[at] = np.frombuffer(b''.join(records), '<i4').reshape(len(at), -1)
    # Contiguous int32 arrays: the device copy takes them as they are.
    out = {k: np.ascontiguousarray(flat[:, i * length:(i + 1) * length], np.int32)
           for i, k in enumerate(_FIELDS)}
    out['nsp_labels'] = flat[:, -1].astype(np.int32)
    return out


def write(table: dict[str, np.ndarray], directory: str, split: str) -> list[str]:
  """Writes a split's instance table as shards in `directory`; returns their names."""
  n = len(table['input_ids'])
  num_shards = max(1, -(-n // ROWS_PER_SHARD))
  rows = np.concatenate([table[k] for k in _FIELDS] + [table['nsp_labels'][:, None]],
                        axis=1).astype('<i4')
  names = []
  for shard in range(num_shards):
    names.append(f'{split}.instances.array_record-{shard:05d}-of-{num_shards:05d}')
    writer = array_record_module.ArrayRecordWriter(os.path.join(directory, names[-1]),
                                                   'group_size:1')
    for row in rows[shard * ROWS_PER_SHARD:(shard + 1) * ROWS_PER_SHARD]:
      writer.write(row.tobytes())
    writer.close()
  return names
