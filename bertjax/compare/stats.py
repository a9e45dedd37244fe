"""The statistics of a masking comparison: t-intervals over seeds, paired t-tests
against the baseline variant, and Holm's correction for testing several variants.

Runs of the same seed share the fine-tuning data order and initial head (and, with
several pre-training seeds, the pre-training data order), so variant and baseline are
compared seed by seed (a paired test), which removes the variance the seeds share.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

from scipy import stats as scipy_stats

ALPHA = 0.05


def t_interval(values, confidence: float = 1 - ALPHA) -> tuple[float, float]:
  """(mean, half-width of the Student t confidence interval); the half-width is nan
  below two values (and the mean below one)."""
  n = len(values)
  if n == 0:
    return math.nan, math.nan
  mean = statistics.fmean(values)
  if n < 2:
    return mean, math.nan
  sem = statistics.stdev(values) / math.sqrt(n)
  return mean, float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem


def holm(p_values) -> list[float]:
  """Holm-Bonferroni adjusted p-values (nan entries are left out of the family)."""
  order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
  m = len(order)
  adjusted = [math.nan] * len(p_values)
  running = 0.0
  for rank, (p, i) in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p))  # adjusted p-values never decrease
    adjusted[i] = running
  return adjusted


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A variant against the baseline over the seeds both ran."""
  difference: float  # mean of (variant - baseline), seed by seed
  p_value: float  # paired two-sided t-test; nan below two pairs or with no spread
  p_holm: float  # Holm-adjusted over every variant compared
  pairs: int

  @property
  def significant(self) -> bool:
    return not math.isnan(self.p_holm) and self.p_holm < ALPHA


def _paired(values, base) -> tuple[float, float, int]:
  """(mean difference, paired two-sided t-test p, pairs) over the first seeds both ran."""
  n = min(len(values), len(base))
  diffs = [v - b for v, b in zip(values[:n], base[:n])]
  p = math.nan
  if n >= 2 and statistics.pstdev(diffs) > 0:
    p = float(scipy_stats.ttest_rel(values[:n], base[:n]).pvalue)
  return (statistics.fmean(diffs) if n else math.nan), p, n


def against_baseline(values_by_name: dict[str, list[float]], baseline: str) -> dict:
  """{variant: Comparison} for every variant but the baseline; values are paired by
  position (the same seeds in the same order)."""
  return against_baseline_by_task({'': values_by_name}, baseline)['']


def against_baseline_by_task(values_by_task: dict[str, dict[str, list[float]]],
                             baseline: str) -> dict:
  """{task: {variant: Comparison}}: `against_baseline` on each task, Holm-corrected
  over every test of every task (one family: the report marks them all)."""
  raw = {(task, name): _paired(values, by_name.get(baseline, []))
         for task, by_name in values_by_task.items()
         for name, values in by_name.items() if name != baseline}
  adjusted = holm([p for _, p, _ in raw.values()])
  out = {task: {} for task in values_by_task}
  for ((task, name), (d, p, n)), a in zip(raw.items(), adjusted):
    out[task][name] = Comparison(d, p, a, n)
  return out
