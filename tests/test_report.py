from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import statistics

import pytest
from PIL import Image

from bertjax.compare import report

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _results():
  def curve(start, rate):
    noise = random.Random(start)
    return [(s, start * math.exp(-rate * s) + noise.gauss(0, 0.15)) for s in range(0, 500, 5)]

  common = dict(config_path='experiments/masking_sweep.py:local',
                downstream_metrics={'sst2': 'accuracy'}, steps=500, tokens=1_024_000)
  return [
      report.VariantResult(name='token', config_hash='0123456789ab', mlm_accuracy_token=0.41,
                           mlm_accuracy_own=0.41, downstream={'sst2': [0.80, 0.82, 0.84]},
                           tokens_per_sec=12000.0, wall_seconds=83.0, loss_curve=curve(8, 0.004),
                           **common),
      report.VariantResult(name='whole_word', config_hash='abcdef012345', mlm_accuracy_token=0.44,
                           mlm_accuracy_own=0.38, downstream={'sst2': [0.83, 0.87]},
                           tokens_per_sec=11000.0, wall_seconds=90.0, loss_curve=curve(8, 0.005),
                           **common),
      report.VariantResult(name='span', config_hash='fedcba987654', mlm_accuracy_token=0.39,
                           mlm_accuracy_own=0.30, downstream={'sst2': [0.81]},
                           tokens_per_sec=12500.0, wall_seconds=3725.0, loss_curve=curve(9, 0.003), pretrain_loss=2.5,
                           **common),
      report.VariantResult(name='ngram', config_hash='00112233aabb', mlm_accuracy_token=0.40,
                           mlm_accuracy_own=0.35, downstream={'sst2': []}, tokens_per_sec=11800.0,
                           wall_seconds=45.0, loss_curve=curve(8.5, 0.0035), **common),
  ]


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  out = tmp_path_factory.mktemp('report')
  paths = report.write_report(_results(), str(out), title='Masking sweep',
                              notes=['A note on the data.'])
  return out, paths


def _table_rows(markdown: str) -> list[list[str]]:
  rows = [line for line in markdown.splitlines() if line.startswith('|')]
  return [[c.strip() for c in row.strip('|').split('|')] for row in rows[2:]]


def test_markdown_has_one_row_per_variant_and_the_right_bold_cells(written):
  out, paths = written
  text = open(paths['markdown'], encoding='utf-8').read()
  assert text.startswith('# Masking sweep\n')
  rows = {r[0]: r for r in _table_rows(text)}
  assert list(rows) == ['token', 'whole_word', 'span', 'ngram']
  bold = {(name, i) for name, r in rows.items() for i, c in enumerate(r) if c.startswith('**')}
  # token acc, own acc, downstream mean, tokens/s (highest), wall time (lowest); the
  # comparison column (4) is never bold.
  assert bold == {('whole_word', 1), ('token', 2), ('whole_word', 3), ('span', 5), ('ngram', 6)}
  assert rows['whole_word'][1] == '**0.4400**'
  assert rows['span'][6] == '1h 02m 05s' and rows['token'][6] == '1m 23s'
  assert rows['ngram'][6] == '**45s**'
  assert rows['token'][7] == 'experiments/masking_sweep.py:local (0123456789ab)'
  assert '- A note on the data.' in text
  assert 'WARNING' not in text and 'Equal budget' in text and '500 steps' in text
  for name in ('loss_curves.png', 'mlm_accuracy.png', 'downstream.png'):
    assert f']({name})' in text
  assert not list(out.glob('*.tmp'))


def test_downstream_cells_interval_single_seed_and_none(written):
  text = open(written[1]['markdown'], encoding='utf-8').read()
  rows = {r[0]: r for r in _table_rows(text)}
  # 95% t half-widths: 4.3027 * 0.02 / sqrt(3) and 12.706 * 0.0283 / sqrt(2).
  assert rows['token'][3] == '0.8200 ± 0.0497 (n=3)'
  assert rows['whole_word'][3] == '**0.8500 ± 0.2541 (n=2)**'
  assert rows['span'][3] == '0.8100'
  assert rows['ngram'][3] == '—'
  # Paired with token's first seeds: whole_word differs by 0.03 and 0.05 (t = 4 on one
  # degree of freedom, p = 0.156, the only test so Holm leaves it), span by one seed.
  assert rows['token'][4] == 'baseline'
  assert rows['whole_word'][4] == '+0.0400 (p=0.156)'
  assert rows['span'][4] == '+0.0100' and rows['ngram'][4] == '—'
  assert 'fine-tuning variance only' in text
  assert 'No variant differs from token by more than the noise' in text
  assert 'Not testable' in text


def test_significant_differences_are_marked_and_named(tmp_path):
  results = _results()
  results[1] = dataclasses.replace(results[1], downstream={'sst2': [0.86, 0.875, 0.89]})
  results[2] = dataclasses.replace(results[2], downstream={'sst2': [0.79, 0.83, 0.83]},
                                   pretrain_seeds=1)
  text = open(report.write_report(results, str(tmp_path), title='t')['markdown']).read()
  rows = {r[0]: r for r in _table_rows(text)}
  assert rows['whole_word'][4].endswith('†') and '(p=' in rows['whole_word'][4]
  assert not rows['span'][4].endswith('†')
  assert 'Differences larger than their noise: whole_word (+0.0550).' in text
  assert 'No variant differs' not in text
  results = [dataclasses.replace(r, pretrain_seeds=2) for r in results]
  assert 'cover pre-training and fine-tuning variance' in report.variance_line(results)
  text = report.format_table(results)
  assert '†' in text


def test_no_baseline_says_so(tmp_path):
  results = _results()[1:]
  text = open(report.write_report(results, str(tmp_path), title='t')['markdown']).read()
  assert 'No paired comparison: the sweep has no `token` variant.' in text


def test_budget_warning_only_when_budgets_differ():
  results = _results()
  assert report.budget_line(results).startswith('Equal budget')
  results[2] = dataclasses.replace(results[2], steps=400)
  line = report.budget_line(results)
  assert line.startswith('WARNING') and 'span: 400 steps' in line
  results = _results()
  results[0] = dataclasses.replace(results[0], tokens=1)
  assert report.budget_line(results).startswith('WARNING')


def test_warning_reaches_the_markdown(tmp_path):
  results = _results()
  results[1] = dataclasses.replace(results[1], steps=499)
  text = open(report.write_report(results, str(tmp_path), title='t')['markdown']).read()
  assert 'WARNING: budgets differ' in text


def test_csv_parses_back_to_the_numbers(written):
  with open(written[1]['csv'], newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  by_name = {r['variant']: r for r in rows}
  for r in _results():
    row = by_name[r.name]
    assert float(row['mlm_accuracy_token']) == r.mlm_accuracy_token
    assert float(row['mlm_accuracy_own']) == r.mlm_accuracy_own
    assert float(row['tokens_per_sec']) == r.tokens_per_sec
    assert float(row['wall_seconds']) == r.wall_seconds
    assert int(row['steps']) == r.steps and int(row['tokens']) == r.tokens
    assert row['config_hash'] == r.config_hash and row['downstream_metric'] == 'accuracy'
    assert row['downstream_task'] == 'sst2'
    runs = r.downstream['sst2']
    values = [float(v) for v in row['downstream_values'].split(';') if v]
    assert values == runs and int(row['downstream_n']) == len(runs)
    if runs:
      assert float(row['downstream_mean']) == pytest.approx(statistics.fmean(runs))
    else:
      assert row['downstream_mean'] == ''
    if len(runs) > 1:
      assert float(row['downstream_std']) == pytest.approx(statistics.stdev(runs))
    else:
      assert row['downstream_std'] == ''
  assert float(by_name['span']['pretrain_loss']) == 2.5
  assert float(by_name['token']['downstream_ci95']) == pytest.approx(0.0497, abs=1e-4)
  assert float(by_name['whole_word']['vs_baseline_difference']) == pytest.approx(0.04)
  assert by_name['token']['vs_baseline_difference'] == '' and by_name['token']['pretrain_seeds'] == '1'
  assert float(by_name['token']['pretrain_loss']) == _results()[0].loss_curve[-1][1]


def test_plots_are_nonblank_pngs(written):
  out, paths = written
  assert [p.rsplit('/', 1)[1] for p in paths['plots']] == [
      'loss_curves.png', 'mlm_accuracy.png', 'downstream.png']
  for path in paths['plots']:
    data = open(path, 'rb').read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
  for path in paths['plots']:
    image = Image.open(path).convert('RGB')
    assert image.width > 400 and image.height > 300
    colors = image.getcolors(maxcolors=1 << 20)
    # Mostly white background, but lines, bars and text in several colours.
    assert len(colors) > 50
    white = max(colors)[0]
    assert white < 0.97 * image.width * image.height


def test_format_table_is_aligned_and_marks_the_best():
  text = report.format_table(_results())
  lines = text.splitlines()
  assert lines[0].startswith('variant') and set(lines[1]) <= {'-', ' '}
  body = lines[2:6]
  assert [line.split()[0] for line in body] == ['token', 'whole_word', 'span', 'ngram']
  # Right-aligned numeric columns end at the same offset in every row.
  ends = {line.index('experiments/') for line in body}
  assert len(ends) == 1
  assert '0.4400 *' in body[1] and '**' not in text
  assert lines[-1].startswith('* best')


def test_mixed_downstream_metrics_are_rejected(tmp_path):
  results = _results()
  results[1] = dataclasses.replace(results[1], downstream_metrics={'sst2': 'f1'})
  with pytest.raises(ValueError, match='different downstream metrics'):
    report.write_report(results, str(tmp_path), title='t')
  assert not list(tmp_path.iterdir())


def test_loss_curve_from_metrics(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [
      {'step': 10, 'loss': 9.5, 'mlm_accuracy': 0.01, 'tokens_per_sec': 1000.0},
      {'step': 20, 'loss': 8.0, 'mlm_accuracy': 0.05, 'tokens_per_sec': 1000.0},
      {'step': 20, 'eval_loss': 8.2, 'eval_mlm_accuracy': 0.04},
      {'step': 30, 'loss': 7.5, 'mlm_accuracy': 0.07, 'tokens_per_sec': 1000.0},
      # Resumed from the step-20 checkpoint: step 30 is logged again and wins.
      {'step': 30, 'loss': 7.4, 'mlm_accuracy': 0.07, 'tokens_per_sec': 1000.0},
      {'step': 40, 'loss': 7.0, 'mlm_accuracy': 0.09, 'tokens_per_sec': 1000.0},
  ]
  path.write_text('\n'.join(json.dumps(x) for x in lines) + '\n\n{"step": 50, "lo')
  assert report.loss_curve_from_metrics(str(path)) == [(10, 9.5), (20, 8.0), (30, 7.4),
                                                       (40, 7.0)]
  path.write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.0}\n')
  with pytest.raises(ValueError, match=':2:'):
    report.loss_curve_from_metrics(str(path))


def test_format_duration():
  assert [report.format_duration(s) for s in (0, 45.4, 83, 3600, 3725)] == [
      '0s', '45s', '1m 23s', '1h 00m 00s', '1h 02m 05s']


def test_each_task_has_its_column_group_csv_rows_and_one_holm_family(tmp_path):
  results = [dataclasses.replace(
      r, downstream_metrics={'sst2': 'accuracy', 'squad': 'f1'},
      downstream={**r.downstream, 'squad': [v * 100 for v in r.downstream['sst2']]})
      for r in _results()]
  paths = report.write_report(results, str(tmp_path), title='t')
  text = open(paths['markdown'], encoding='utf-8').read()
  header = [line for line in text.splitlines() if line.startswith('|')][0]
  assert ('sst2: accuracy (mean ± 95% CI) | sst2: vs token (Holm p) | '
          'squad: f1 (mean ± 95% CI) | squad: vs token (Holm p)') in header
  rows = {r[0]: r for r in _table_rows(text)}
  assert rows['token'][5] == '82.0000 ± 4.9683 (n=3)'
  # The same paired test twice (scaled values), Holm over both: p doubles to 0.312.
  assert rows['whole_word'][4] == '+0.0400 (p=0.312)'
  assert rows['whole_word'][6] == '+4.0000 (p=0.312)'
  assert 'Holm-corrected over the 2 tests of all 2 tasks' in text
  with open(paths['csv'], newline='', encoding='utf-8') as f:
    csv_rows = list(csv.DictReader(f))
  assert [(r['downstream_task'], r['variant']) for r in csv_rows] == [
      (t, r.name) for t in ('sst2', 'squad') for r in results]
  assert csv_rows[5]['downstream_metric'] == 'f1'


def test_a_one_task_result_json_reads_back_as_the_first_task():
  saved = dataclasses.asdict(_results()[0])
  old = dict(saved, downstream_metric_name='accuracy', downstream=[0.80, 0.82, 0.84])
  del old['downstream_metrics']
  r = report.VariantResult.from_json(json.loads(json.dumps(old)), 'sst2')
  assert r == _results()[0]
  assert report.VariantResult.from_json(json.loads(json.dumps(saved)), 'other') == r
