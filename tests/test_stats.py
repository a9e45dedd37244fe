"""The comparison's statistics on synthetic numbers with known answers."""
import dataclasses
import math
import random
import statistics

import pytest
from scipy import stats as scipy_stats

from bertjax.compare import stats


def test_t_interval_matches_the_textbook_formula():
  values = [0.80, 0.82, 0.84]
  mean, half = stats.t_interval(values)
  assert mean == pytest.approx(0.82)
  # t_{0.975, 2} = 4.3027; sd = 0.02; half = 4.3027 * 0.02 / sqrt(3).
  assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
  assert stats.t_interval([0.5])[0] == 0.5 and math.isnan(stats.t_interval([0.5])[1])
  assert all(math.isnan(v) for v in stats.t_interval([]))


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
  rng = random.Random(0)
  hits = 0
  for _ in range(4000):
    mean, half = stats.t_interval([rng.gauss(1.0, 0.3) for _ in range(3)])
    hits += abs(mean - 1.0) <= half
  assert abs(hits / 4000 - 0.95) < 0.012


def test_holm_against_hand_computed_values():
  # Sorted 0.01, 0.02, 0.04 among m = 3: 0.03, max(0.03, 0.04), max(0.04, 0.04).
  assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
  # Monotone, capped at 1, nan left out of the family.
  adjusted = stats.holm([0.5, math.nan, 0.001, 0.9])
  assert adjusted[2] == pytest.approx(0.003) and adjusted[0] == pytest.approx(1.0)
  assert math.isnan(adjusted[1]) and adjusted[3] == 1.0


def test_paired_comparison_finds_a_real_shift_and_not_noise():
  """Seeds share a large common effect (paired tests remove it): a +0.02 shift is
  found, a variant equal to the baseline is not, and neither is an unpaired view."""
  rng = random.Random(1)
  seed_effect = [rng.gauss(0, 0.05) for _ in range(5)]
  base = [0.80 + e + rng.gauss(0, 0.003) for e in seed_effect]
  better = [0.82 + e + rng.gauss(0, 0.003) for e in seed_effect]
  same = [0.80 + e + rng.gauss(0, 0.003) for e in seed_effect]
  result = stats.against_baseline({'token': base, 'better': better, 'same': same}, 'token')
  assert set(result) == {'better', 'same'}
  assert result['better'].significant and not result['same'].significant
  assert result['better'].difference == pytest.approx(
      statistics.fmean(better) - statistics.fmean(base))
  assert result['better'].p_value == pytest.approx(scipy_stats.ttest_rel(better, base).pvalue)
  # The smaller of the two p-values is doubled by Holm's first step.
  assert result['better'].p_holm == pytest.approx(2 * result['better'].p_value)
  # Unpaired, the seed effect swamps the shift.
  assert scipy_stats.ttest_ind(better, base).pvalue > 0.05


def test_holm_keeps_the_family_wise_error_rate():
  """Six variants equal to the baseline, 3 seeds each: with Holm at most ~5% of sweeps
  report any difference; uncorrected tests would report one far more often."""
  rng = random.Random(2)
  any_holm = any_raw = 0
  trials = 800
  for _ in range(trials):
    values = {name: [rng.gauss(0.8, 0.01) for _ in range(3)]
              for name in ('token', 'a', 'b', 'c', 'd', 'e', 'f')}
    result = stats.against_baseline(values, 'token')
    any_holm += any(c.significant for c in result.values())
    any_raw += any(c.p_value < 0.05 for c in result.values())
  assert any_holm / trials < 0.065 and any_raw / trials > 0.15


def test_tasks_are_one_holm_family():
  """Two tasks, each with one variant and the same p-values: Holm corrects over all
  four tests, so each task's figures are those of a four-test family."""
  rng = random.Random(3)
  base = [0.8 + rng.gauss(0, 0.01) for _ in range(4)]
  per_task = {'a': [b + 0.01 + rng.gauss(0, 0.005) for b in base],
              'b': [b + rng.gauss(0, 0.01) for b in base]}
  values = {'token': base, **per_task}
  result = stats.against_baseline_by_task({'qa': values, 'classify': values}, 'token')
  alone = stats.against_baseline(values, 'token')
  assert set(result) == {'qa', 'classify'}
  raw = [alone[n].p_value for n in ('a', 'b')] * 2
  for task in ('qa', 'classify'):
    for k, name in enumerate(('a', 'b')):
      assert result[task][name].p_value == pytest.approx(alone[name].p_value)
      assert result[task][name].p_holm == pytest.approx(stats.holm(raw)[k])
  assert result['qa']['a'].p_holm > alone['a'].p_holm


def test_too_few_pairs_are_not_tested():
  result = stats.against_baseline({'token': [0.8, 0.81], 'one': [0.9], 'flat': [0.9, 0.91]},
                                  'token')
  assert math.isnan(result['one'].p_value) and not result['one'].significant
  assert result['one'].pairs == 1 and result['one'].difference == pytest.approx(0.1)
  # Every seed exactly +0.1: no spread to test against.
  assert math.isnan(result['flat'].p_value)


def test_several_pretraining_seeds_count_one_value_per_pretrained_model():
  from bertjax.compare import report
  r = report.VariantResult(
      name='span', config_path='x', config_hash='h', mlm_accuracy_token=0.1,
      mlm_accuracy_own=0.1, downstream_metrics={'qa': 'f1'},
      downstream={'qa': [1.0, 3.0, 10.0, 12.0]}, tokens_per_sec=1.0, wall_seconds=1.0,
      steps=1, tokens=1, loss_curve=[], pretrain_seeds=2)
  # Runs of one pre-trained model are not independent.
  assert report.units(r, 'qa') == [2.0, 11.0]
  assert report.units(dataclasses.replace(r, pretrain_seeds=1), 'qa') == [1.0, 3.0, 10.0, 12.0]
  assert report.units(r, 'classify') == []
