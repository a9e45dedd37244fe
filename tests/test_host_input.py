"""Each host's input work a step is its own rows: fine-tuning's batch indices are
looked up for this process's positions only, from an epoch order built once."""
import numpy as np
import pytest

from bertjax import finetune


class CountingOrder:
  """An epoch order that counts the positions looked up in it."""

  def __init__(self, order, looked_up):
    self.order, self.looked_up = order, looked_up

  def __getitem__(self, positions):
    self.looked_up.append(len(positions))
    return self.order[positions]


@pytest.fixture
def counted(monkeypatch):
  finetune.epoch_order.cache_clear()
  looked_up = []
  real = finetune.epoch_order
  monkeypatch.setattr(finetune, 'epoch_order',
                      lambda *a: CountingOrder(real(*a), looked_up))
  yield looked_up, real
  real.cache_clear()


def test_a_host_builds_only_its_rows_and_one_order_an_epoch(counted):
  looked_up, real = counted
  num_rows, batch, parts, steps = 1000, 64, 8, 40  # 40 x 64 rows: 2.56 epochs
  for step in range(steps):
    rows = finetune.batch_indices(num_rows, batch, step, seed=5, part=3, parts=parts)
    assert len(rows) == batch // parts
  assert sum(looked_up) == steps * batch // parts
  assert real.cache_info().misses == 3  # epochs 0, 1, 2: each order built once


def test_parts_put_together_are_the_whole_batch():
  for step in (0, 15, 16, 31):  # 15 and 31 cross an epoch boundary (1000 / 64)
    whole = finetune.batch_indices(1000, 64, step, seed=5)
    parts = [finetune.batch_indices(1000, 64, step, seed=5, part=p, parts=4) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_batches_are_the_epoch_permutations_they_always_were():
  """Old fine-tune workdirs resume mid-epoch on the same batches: each epoch is
  default_rng([seed, epoch]).permutation(rows), read in order."""
  seen = np.concatenate([finetune.batch_indices(100, 8, s, seed=2) for s in range(25)])
  want = np.concatenate([np.random.default_rng([2, e]).permutation(100) for e in (0, 1)])
  np.testing.assert_array_equal(seen, want)
