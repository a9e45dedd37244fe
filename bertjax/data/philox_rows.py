"""numpy's Philox streams for many rows at once, vectorised over the rows.

The pipeline gives every row of a batch its own random stream,
`np.random.Generator(np.random.Philox(key=k))` with k from (seed, batch, row), so a
row is masked the same way in any batch, process or batch size. Making 256
Generators a batch and drawing from each in turn costs more than the masking;
`PhiloxRows` computes the same numbers, bit for bit, as whole (rows, n) arrays:
Philox4x64-10 (Salmon et al. 2011; numpy's constants, rounds and counter, which
starts at 1 for the first four 64-bit words), doubles as numpy makes them
(`(u64 >> 11) * 2**-53`), and bounded integers as numpy's Lemire method over 32-bit
halves (low half first). The rare row whose integers need a rejected draw is
redrawn by a real Generator replaying the row's calls.
"""
from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2E7470EE14C6C93), np.uint64(0xCA5A826395121157)
_W0, _W1 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBB67AE8584CAA73B)
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)
_ROUNDS = 10


_CHUNK = 16384  # elements a pass: big enough to amortise numpy's calls, small enough for cache


def _mulhilo(a, b):
  """(high, low) 64-bit halves of the 128-bit products a * b (b a scalar), by 32-bit
  halves as Hacker's Delight's mulhu does (no partial sum overflows 64 bits)."""
  a_lo, a_hi = a & _LOW32, a >> _32
  b_lo, b_hi = b & _LOW32, b >> _32
  t = a_hi * b_lo + ((a_lo * b_lo) >> _32)
  w = (t & _LOW32) + a_lo * b_hi
  return a_hi * b_hi + (t >> _32) + (w >> _32), a * b


def philox4x64(key_lo, key_hi, counters):
  """Philox4x64-10 of counter words (c, 0, 0, 0) under keys (key_lo, key_hi):
  (rows, len(counters) * 4) uint64, each block's four words in order."""
  counters = np.asarray(counters, np.uint64)
  step = max(1, _CHUNK // max(len(key_lo), 1))
  return np.concatenate([_philox4x64(key_lo, key_hi, counters[i:i + step])
                         for i in range(0, len(counters), step)] or
                        [np.zeros((len(key_lo), 0), np.uint64)], axis=1)


def _philox4x64(key_lo, key_hi, counters):
  c0 = np.broadcast_to(counters, (len(key_lo), len(counters))).copy()
  c1 = np.zeros_like(c0)
  c2 = np.zeros_like(c0)
  c3 = np.zeros_like(c0)
  k0 = np.asarray(key_lo, np.uint64)[:, None].copy()
  k1 = np.asarray(key_hi, np.uint64)[:, None].copy()
  for r in range(_ROUNDS):
    if r:
      k0 += _W0
      k1 += _W1
    hi0, lo0 = _mulhilo(c0, _M0)
    hi1, lo1 = _mulhilo(c2, _M1)
    c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
  return np.stack([c0, c1, c2, c3], axis=-1).reshape(len(key_lo), -1)


class PhiloxRows:
  """Row r draws what `np.random.Generator(np.random.Philox(key=keys[r]))` would.

  `keys` are 128-bit ints (numpy's Philox key words: low 64 bits, high 64 bits).
  Supports the draws masking makes, each (rows, n)-shaped: `random` and
  `integers(low, high)` with 0 < high - low <= 2**32.
  """

  def __init__(self, keys):
    self.keys = [int(k) for k in keys]
    self.key_lo = np.array([k & (2**64 - 1) for k in self.keys], np.uint64)
    self.key_hi = np.array([k >> 64 for k in self.keys], np.uint64)
    self.used = 0  # 64-bit words every row's stream has handed out
    self.pending = None  # high halves of the last words, kept for the next 32-bit draw
    self.calls = []  # the draws so far, for replaying a row
    self.diverged = set()  # rows whose integers rejected a draw: replayed from then on

  def _words(self, n: int) -> np.ndarray:
    """The next n 64-bit words of every row's stream, (rows, n)."""
    first, self.used = self.used, self.used + n
    if not n:
      return np.zeros((len(self.keys), 0), np.uint64)
    blocks = np.arange(first // 4 + 1, (first + n - 1) // 4 + 2, dtype=np.uint64)
    return philox4x64(self.key_lo, self.key_hi, blocks)[:, first % 4:first % 4 + n]

  def _check_size(self, size):
    if len(size) != 2 or size[0] != len(self.keys):
      raise ValueError(f'PhiloxRows draws (rows, n) arrays of {len(self.keys)} rows, not {size}')

  def random(self, size) -> np.ndarray:
    self._check_size(size)
    self.calls.append(('random', (), size[1]))
    return self._exact((self._words(size[1]) >> np.uint64(11)) * (1.0 / 9007199254740992.0))

  def integers(self, low: int, high: int, size) -> np.ndarray:
    self._check_size(size)
    n, span = size[1], high - low
    if not 0 < span <= 2**32:
      raise ValueError(f'PhiloxRows integers need 0 < high - low <= 2**32, not {span}')
    self.calls.append(('integers', (low, high), n))
    if span == 1:  # numpy draws nothing for a one-value range
      return self._exact(np.full((len(self.keys), n), low, np.int64))
    # n 32-bit draws: a kept high half first, then each new word's low and high halves.
    kept = [] if self.pending is None else [self.pending[:, None]]
    words = self._words(-(-(n - len(kept)) // 2))
    u32 = np.concatenate(kept + [np.stack([words & _LOW32, words >> _32], -1)
                                 .reshape(len(words), -1)], axis=1)
    self.pending = u32[:, n] if u32.shape[1] > n else None
    scaled = u32[:, :n] * np.uint64(span)
    # Lemire's method rejects a draw whose low half is under 2**32 % span (about one
    # in 2**32 / span), which shifts the rest of that row's stream.
    self.diverged.update(np.flatnonzero(
        ((scaled & _LOW32) < np.uint64(2**32 % span)).any(axis=1)).tolist())
    return self._exact((scaled >> _32).astype(np.int64) + low)

  def _exact(self, out: np.ndarray) -> np.ndarray:
    """`out` with the diverged rows' values from a Generator replaying their draws."""
    for row in sorted(self.diverged):
      generator = np.random.Generator(np.random.Philox(key=self.keys[row]))
      for method, args, n in self.calls:
        value = getattr(generator, method)(*args, size=n)
      out[row] = value
    return out
