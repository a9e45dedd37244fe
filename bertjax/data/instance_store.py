"""Pre-built instances on disk, read a few rows at a time: the pod-scale input path.

`bertjax data prepare --seq_len N` writes each split's instances (fixed-length rows,
as `instances.make_table` builds them) into array_record shards, one record a row:
little-endian int32 `[input_ids L, token_type_ids L, attention_mask L, position_ids L,
nsp_label]`. `InstanceSource` reads rows by index through grain's
ArrayRecordDataSource, so each process touches only the rows of its own share of
each batch, and no host holds the corpus in memory. `InMemoryInstances` gives a
table built on the fly the same interface.
"""
from __future__ import annotations

import os

import grain
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
  """Instances of one prepared split, read row by row from array_record shards."""

  def __init__(self, directory: str, shards: list[str], seq_len: int):
    self.seq_len = seq_len
    self.source = grain.sources.ArrayRecordDataSource(
        [os.path.join(directory, s) for s in shards])

  def __len__(self) -> int:
    return len(self.source)

  def rows(self, indices) -> dict[str, np.ndarray]:
    records = self.source.__getitems__([int(i) for i in indices])
    flat = np.stack([np.frombuffer(r, dtype='<i4') for r in records]).astype(np.int32)
    length = self.seq_len
    out = {k: flat[:, i * length:(i + 1) * length] for i, k in enumerate(_FIELDS)}
    out['nsp_labels'] = flat[:, -1]
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
