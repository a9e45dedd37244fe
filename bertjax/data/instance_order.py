"""The training order of the instances, many positions at a time.

Pre-training reads instances in the order of
`grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)`: epoch e is a
pseudorandom permutation of the n instances drawn with seed (seed + e) mod 2**32.
grain computes each position with a small cipher (index_shuffle.cc: a 4-round Simon
cipher on the fewest even number of bits, at least 16, that hold n - 1, its round
keys from std::seed_seq, cycle-walking until the result is below n), one Python call
a position. `InstanceOrder` computes the same numbers for an array of positions at
once, so a host's lookups cost one vectorised pass a batch (checked against grain's
own order in tests/test_pretrain_host_input.py).
"""
from __future__ import annotations

import functools
import math

import grain
import numpy as np

_ROUNDS = 4  # grain's shuffle always uses 4
_MIN_BLOCK_BITS = 16


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int) -> tuple[int, ...]:
  """std::seed_seq{seed}.generate() of _ROUNDS 32-bit words (C++ [rand.util.seedseq])."""
  n, mask = _ROUNDS, 0xFFFFFFFF
  out = [0x8B8B8B8B] * n
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p, q = (n - t) // 2, (n - t) // 2 + t
  mix = lambda x: x ^ (x >> 27)
  values = [seed & mask]
  m = max(len(values) + 1, n)
  for k in range(m):
    r1 = 1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n]) & mask
    if k == 0:
      r2 = (r1 + len(values)) & mask
    elif k <= len(values):
      r2 = (r1 + k % n + values[k - 1]) & mask
    else:
      r2 = (r1 + k % n) & mask
    out[(k + p) % n] = (out[(k + p) % n] + r1) & mask
    out[(k + q) % n] = (out[(k + q) % n] + r2) & mask
    out[k % n] = r2
  for k in range(m, m + n):
    r3 = 1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & mask) & mask
    r4 = (r3 - k % n) & mask
    out[(k + p) % n] ^= r3
    out[(k + q) % n] ^= r4
    out[k % n] = r4
  return tuple(out)


def _word_bits(max_index: int) -> int:
  block = math.ceil(math.log2(max_index))
  return max(block + block % 2, _MIN_BLOCK_BITS) // 2


def _encrypt(value, keys, bits: int):
  """Simon rounds on (value >> bits, value) as two `bits`-bit words."""
  mask = np.uint64((1 << bits) - 1)
  rotl = lambda x, r: ((x << np.uint64(r)) | (x >> np.uint64(bits - r))) & mask
  f = lambda x: (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)
  left, right = (value >> np.uint64(bits)) & mask, value & mask
  for i in range(0, len(keys), 2):
    left = left ^ f(right) ^ (np.uint64(keys[i]) & mask)
    right = right ^ f(left) ^ (np.uint64(keys[i + 1]) & mask)
  return (left << np.uint64(bits)) | right


def shuffle_indices(indices, max_index: int, seed: int) -> np.ndarray:
  """grain's index_shuffle(i, max_index, seed, rounds=4) of each index."""
  indices = np.asarray(indices, np.uint64)
  if max_index == 0:
    return np.zeros_like(indices)
  keys, bits = _round_keys(seed % 2**32), _word_bits(max_index)
  out = _encrypt(indices, keys, bits)
  walking = np.flatnonzero(out > np.uint64(max_index))
  while len(walking):  # cycle walking: re-encrypt until inside [0, max_index]
    out[walking] = _encrypt(out[walking], keys, bits)
    walking = walking[out[walking] > np.uint64(max_index)]
  return out


class InstanceOrder:
  """Position -> instance index in range(n).shuffle(seed).repeat(None), for arrays of
  positions.

  Cycle walking takes about 2**(2 * bits) / n steps: vectorised when that is at most
  4 (any n above 2**14); a smaller corpus, whose cipher works on 2**16 values, asks
  grain position by position, where the walk is a C++ loop.
  """

  def __init__(self, num_instances: int, seed: int):
    self.num_instances, self.seed = num_instances, seed
    self.vectorised = (num_instances > 1
                       and 1 << 2 * _word_bits(num_instances - 1) <= 4 * num_instances)
    self.grain_order = grain.MapDataset.range(num_instances).shuffle(seed=seed).repeat(None)

  def __getitem__(self, positions) -> np.ndarray:
    positions = np.asarray(positions, np.int64)
    if not self.vectorised:
      return np.array([self.grain_order[p] for p in positions.tolist()], np.int64)
    epochs, within = np.divmod(positions, self.num_instances)
    out = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs).tolist():
      at = epochs == epoch
      out[at] = shuffle_indices(within[at], self.num_instances - 1, self.seed + epoch)
    return out
