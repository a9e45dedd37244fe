"""Each host's pre-training input work a step is its own rows: the positions of its
share of the global batch are looked up in the shuffled, repeated instance order one
by one, and only those rows are read and masked; the hosts' shares put together are
the batch one process would build, and that batch is the one runs have always seen."""
from __future__ import annotations

import os
import types

import grain
import numpy as np
import pytest

from bertjax import config_lib
from bertjax.data import instance_order, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS, BATCH, SEED = 4, 16, 3


class CountingOrder:
  """The instance order, counting the positions looked up in it."""

  def __init__(self, order, looked_up):
    self.order, self.looked_up = order, looked_up

  def __getitem__(self, positions):
    self.looked_up.extend(np.asarray(positions).tolist())
    return self.order[positions]


class CountingRows:
  """An instance table recording the indices each read asks for."""

  def __init__(self, table, reads):
    self.table, self.reads = table, reads

  def __len__(self):
    return len(self.table)

  def rows(self, indices):
    self.reads.append(np.asarray(indices).tolist())
    return self.table.rows(indices)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  c = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local')
  tok, train_rows, _, _ = pipeline._instances(c.data, SEED, str(tmp_path_factory.mktemp('w')))
  return c.data.masking, tok, train_rows


def _batches(monkeypatch, corpus, *, process, processes, dupe_factor=0):
  """(this process's dataset, positions it looked up, indices it read)."""
  masking_cfg, tok, train_rows = corpus
  monkeypatch.setattr(pipeline, 'jax', types.SimpleNamespace(
      process_index=lambda: process, process_count=lambda: processes))
  looked_up, reads = [], []
  real = pipeline.instance_order
  monkeypatch.setattr(pipeline, 'instance_order',
                      lambda *a: CountingOrder(real(*a), looked_up))
  dataset = pipeline.train_batches(CountingRows(train_rows, reads), tok, masking_cfg,
                                   seed=SEED, batch_size=BATCH, dupe_factor=dupe_factor)
  return dataset, looked_up, reads


def _batch_numbers(num_rows):
  # The first batches, and ones that straddle the end of epochs 0 and 2.
  return [0, 1, num_rows // BATCH, 3 * num_rows // BATCH]


def test_a_host_looks_up_and_reads_only_its_own_rows(monkeypatch, corpus):
  num_rows = len(corpus[2])
  assert num_rows % BATCH  # so some batches straddle two epochs
  local = BATCH // HOSTS
  for process in range(HOSTS):
    dataset, looked_up, reads = _batches(monkeypatch, corpus, process=process,
                                         processes=HOSTS)
    for b in _batch_numbers(num_rows):
      looked_up.clear()
      reads.clear()
      dataset[b]
      first = b * BATCH + process * local
      assert looked_up == list(range(first, first + local))
      assert [len(r) for r in reads] == [local]


@pytest.mark.parametrize('dupe_factor', [0, 2])
def test_the_hosts_rows_together_are_the_one_process_batch(monkeypatch, corpus, dupe_factor):
  whole, _, _ = _batches(monkeypatch, corpus, process=0, processes=1, dupe_factor=dupe_factor)
  parts = [_batches(monkeypatch, corpus, process=p, processes=HOSTS,
                    dupe_factor=dupe_factor)[0] for p in range(HOSTS)]
  for b in _batch_numbers(len(corpus[2])):
    want = whole[b]
    got = [part[b] for part in parts]
    assert set(want) >= {'input_ids', 'mlm_positions', 'mlm_targets', 'mlm_weights'}
    for key, value in want.items():
      together = np.concatenate([g[key] for g in got])
      assert together.dtype == value.dtype
      np.testing.assert_array_equal(together, value, err_msg=f'batch {b} {key}')


def test_batches_hold_the_instances_they_always_did(monkeypatch, corpus):
  """Runs that built whole global batches resume on the same rows: batch b is
  positions b * B ... (b + 1) * B - 1 of range(n).shuffle(seed).repeat(None), and
  there are as many batches as `.batch(B)` of it made, so their iterator states restore."""
  num_rows = len(corpus[2])
  old = (grain.MapDataset.range(num_rows).shuffle(seed=SEED).repeat(None)
         .batch(BATCH, drop_remainder=True))
  dataset, _, reads = _batches(monkeypatch, corpus, process=0, processes=1)
  assert len(dataset) == len(old)
  for b in _batch_numbers(num_rows):
    reads.clear()
    dataset[b]
    assert reads == [old[b].tolist()]


@pytest.mark.parametrize('num_rows,seed', [(16385, 4), (65536, 9), (65537, 2**32 - 2),
                                           (2**20 + 3, 11), (1000, 3)])
def test_the_vectorised_order_is_grains_shuffle(num_rows, seed):
  """Every size the cipher's block takes, both sides of a power of two, seeds that
  wrap past 2**32 with the epoch, and a corpus small enough to ask grain itself."""
  grains = grain.MapDataset.range(num_rows).shuffle(seed=seed).repeat(None)
  order = instance_order.InstanceOrder(num_rows, seed)
  assert order.vectorised == (num_rows > 2**14)
  positions = np.concatenate([np.arange(300), np.arange(num_rows - 150, num_rows + 150),
                              np.arange(5 * num_rows - 7, 5 * num_rows + 50)])
  np.testing.assert_array_equal(order[positions], [grains[p] for p in positions.tolist()])
