"""The report of a masking comparison: one table, three plots, a CSV.

`bertjax compare` gathers one `VariantResult` per masking variant and calls
`write_report`; this module only formats what it is given (with the statistics of
compare/stats.py: 95% t-intervals over seeds, paired t-tests against the `token`
baseline, Holm-corrected over every test in the report), so the numbers in the
report are exactly the ones compare measured. A sweep fine-tunes on one or more
downstream tasks; the table has one column group per task. The report's directory may
be local or a URL (`gs://...`): plots are drawn on local disk, and every file is written
whole through bertjax.storage (a temporary name renamed locally, one upload on object
storage), so an interrupted report never leaves a half-written file behind.
Plots are drawn on `matplotlib.figure.Figure` (Agg canvas, no pyplot), so no
display is needed, no global backend is switched and importing this module stays
cheap.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import statistics
import tempfile
from collections.abc import Sequence

from bertjax import jsonl_log, storage
from bertjax.compare import stats
from bertjax.errors import UserError

BASELINE = 'token'  # the variant every other one is tested against
_PLOTS = ('loss_curves.png', 'mlm_accuracy.png', 'downstream.png')


@dataclasses.dataclass
class VariantResult:
  """What one variant achieved under the shared budget (see module docstring)."""
  name: str
  config_path: str  # 'experiments/masking_sweep.py:local'
  config_hash: str  # 12 hex digits
  mlm_accuracy_token: float  # held-out MLM accuracy under the common token masking
  mlm_accuracy_own: float  # ... under the variant's own masking
  # Per downstream task (in the sweep's order): its metric's name, and one value per
  # fine-tuning run (may be empty).
  downstream_metrics: dict[str, str]
  downstream: dict[str, list[float]]
  tokens_per_sec: float
  wall_seconds: float  # pre-training wall time
  steps: int
  tokens: int  # tokens seen in pre-training
  loss_curve: list[tuple[int, float]]
  pretrain_loss: float | None = None  # final; defaults to the curve's last value
  # Pre-trained models the downstream values come from (each fine-tuned over the
  # same seeds, values ordered pre-training seed first): which variance they cover.
  pretrain_seeds: int = 1

  @classmethod
  def from_json(cls, saved: dict, first_task: str) -> VariantResult:
    """A result.json; one written before sweeps had several downstream tasks (a
    `downstream_metric_name` and one list) holds the first task's values."""
    saved = dict(saved)
    if 'downstream_metric_name' in saved:
      saved['downstream_metrics'] = {first_task: saved.pop('downstream_metric_name')}
      saved['downstream'] = {first_task: saved['downstream']}
    saved['loss_curve'] = [tuple(point) for point in saved['loss_curve']]
    return cls(**saved)

  @property
  def final_loss(self) -> float | None:
    if self.pretrain_loss is not None:
      return self.pretrain_loss
    return self.loss_curve[-1][1] if self.loss_curve else None


def read_metrics(path: str) -> list[dict]:
  """The records of a run's metrics log, named by its local name `DIR/metrics.jsonl`:
  that file, or the segments `DIR/metrics/` a run on object storage writes (see
  jsonl_log). A torn last line (a run killed mid-write) is skipped; a malformed line
  elsewhere is an error."""
  directory, name = os.path.split(os.fspath(path))
  try:
    return list(jsonl_log.read(directory, name.removesuffix('.jsonl')))
  except UserError as e:  # this module's callers expect ValueError for bad data
    raise ValueError(str(e)) from None


def loss_curve_from_metrics(path: str) -> list[tuple[int, float]]:
  """(step, loss) of the training lines of a metrics log (see read_metrics), sorted
  by step.

  A resumed run logs the steps after its last checkpoint again; the later line
  wins, so the curve shows what the finished run actually did.
  """
  losses = {}
  for record in read_metrics(path):
    if 'loss' in record and not any(k.startswith('eval_') for k in record):
      losses[int(record['step'])] = float(record['loss'])
  return sorted(losses.items())


def format_duration(seconds: float) -> str:
  """'45s', '1m 23s', '2h 05m 09s'."""
  s = int(round(seconds))
  h, rem = divmod(s, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f'{h}h {m:02d}m {s:02d}s'
  return f'{m}m {s:02d}s' if m else f'{s}s'


def downstream_stats(values) -> tuple[float, float, int]:
  """(mean, sample std, n); std is nan below two seeds and mean below one."""
  n = len(values)
  mean = statistics.fmean(values) if n else math.nan
  std = statistics.stdev(values) if n > 1 else math.nan
  return mean, std, n


def budget_line(results) -> str:
  """The shared budget, or a warning naming each variant's when they differ."""
  steps = {r.steps for r in results}
  tokens = {r.tokens for r in results}
  if len(steps) == 1 and len(tokens) == 1:
    return (f'Equal budget: every variant pre-trained for {steps.pop():,} steps '
            f'and {tokens.pop():,} tokens.')
  per = ', '.join(f'{r.name}: {r.steps:,} steps / {r.tokens:,} tokens' for r in results)
  return f'WARNING: budgets differ, so the variants are not directly comparable ({per}).'


def tasks(results) -> list[str]:
  """The downstream tasks, in the order the results name them."""
  names = {}
  for r in results:
    names.update(dict.fromkeys(r.downstream))
  return list(names)


def metric_name(results, task: str) -> str:
  names = {r.downstream_metrics[task] for r in results if r.downstream.get(task)}
  if len(names) > 1:
    raise ValueError(f'variants report different downstream metrics for {task}: '
                     f'{sorted(names)}')
  if names:
    return names.pop()
  return next((r.downstream_metrics[task] for r in results if task in r.downstream_metrics),
              'downstream')


def _accuracy(v: float) -> str:
  return '—' if math.isnan(v) else f'{v:.4f}'


def units(r, task: str) -> list[float]:
  """The independent values of a variant's metric on `task`: one per fine-tuning run
  of one pre-trained model; with several pre-training seeds, the mean over each
  model's fine-tuning seeds (runs from one pre-trained model are not independent)."""
  values = list(r.downstream.get(task, ()))
  if r.pretrain_seeds <= 1 or not values:
    return values
  per = len(values) // r.pretrain_seeds
  return [statistics.fmean(values[i * per:(i + 1) * per]) for i in range(r.pretrain_seeds)]


def _downstream_cell(values) -> str:
  mean, half = stats.t_interval(values)
  n = len(values)
  if n == 0:
    return '—'
  return f'{mean:.4f}' if n == 1 else f'{mean:.4f} ± {half:.4f} (n={n})'


def comparisons(results) -> dict:
  """{task: {variant: stats.Comparison}} of each variant's values against BASELINE's,
  Holm-corrected over every test of every task (empty without a baseline)."""
  if BASELINE not in {r.name for r in results}:
    return {}
  return stats.against_baseline_by_task(
      {task: {r.name: units(r, task) for r in results} for task in tasks(results)}, BASELINE)


def _comparison_cell(r, compared) -> str:
  c = compared.get(r.name)
  if r.name == BASELINE:
    return 'baseline'
  if c is None or math.isnan(c.difference):
    return '—'
  if math.isnan(c.p_holm):
    return f'{c.difference:+.4f}'
  return f'{c.difference:+.4f} (p={c.p_holm:.3f})' + (' †' if c.significant else '')


def variance_line(results) -> str:
  """Which variance the intervals cover."""
  pre = max((r.pretrain_seeds for r in results if any(r.downstream.values())), default=1)
  n = max((len(v) for r in results for v in r.downstream.values()), default=0)
  if pre > 1:
    return (f'Intervals and paired tests: 95% Student t over {pre} pre-trained models per '
            f'variant (n = {pre}), each the mean of its fine-tuning seeds ({n} runs a task '
            'in all), so they cover pre-training and fine-tuning variance.')
  return (f'Intervals: 95% Student t over up to {n} fine-tuning seeds of one pre-trained '
          'model per variant: they cover fine-tuning variance only, not the variance '
          'between pre-training runs (sweep option `pretrain_seeds`).')


def significance_lines(results) -> list[str]:
  """What the paired tests say, plainly, including when they find nothing."""
  compared = comparisons(results)
  if not compared:
    return [f'No paired comparison: the sweep has no `{BASELINE}` variant.']
  tested = [(t, n) for t, by in compared.items() for n, c in by.items()
            if not math.isnan(c.p_holm)]
  several = len(compared) > 1
  lines = [f'vs {BASELINE}: mean difference seed by seed; p from a two-sided paired t-test '
           f'over the seeds both ran, Holm-corrected over the {len(tested)} tests'
           + (f' of all {len(compared)} tasks' if several else '')
           + f'; † marks a difference larger than its noise (corrected p < {stats.ALPHA}).']
  label = (lambda t, n: f'{n} on {t}') if several else (lambda t, n: n)
  real = [(t, n, c) for t, by in compared.items() for n, c in by.items() if c.significant]
  if real:
    lines.append('Differences larger than their noise: ' + ', '.join(
        f'{label(t, n)} ({c.difference:+.4f})' for t, n, c in real) + '.')
  else:
    lines.append(f'No variant differs from {BASELINE} by more than the noise between seeds'
                 + (' on any task' if several else '') + '; the ranking in this table may '
                 'be chance.')
  untestable = [label(t, n) for t, by in compared.items() for n, c in by.items()
                if math.isnan(c.p_holm)]
  if untestable:
    lines.append('Not testable (fewer than two paired seeds, or no spread): '
                 + ', '.join(untestable) + '.')
  return lines


def _task_columns(results, task: str, compared: dict, prefix: str):
  metric = metric_name(results, task)
  return [
      (f'{prefix}{metric} (mean ± 95% CI)', lambda r: downstream_stats(units(r, task))[0],
       lambda r: _downstream_cell(units(r, task)), True),
      (f'{prefix}vs {BASELINE} (Holm p)', None,
       lambda r: _comparison_cell(r, compared.get(task, {})), None),
  ]


def _scored_columns(results):
  """Columns compared across variants: (header, value, cell text, higher is better);
  one group of two a downstream task, headed by the task's name when there are
  several."""
  compared = comparisons(results)
  names = tasks(results)
  downstream = [column for task in names for column in _task_columns(
      results, task, compared, f'{task}: ' if len(names) > 1 else '')]
  return [
      ('MLM acc (token masking)', lambda r: r.mlm_accuracy_token,
       lambda r: _accuracy(r.mlm_accuracy_token), True),
      ('MLM acc (own masking)', lambda r: r.mlm_accuracy_own,
       lambda r: _accuracy(r.mlm_accuracy_own), True),
      *downstream,
      ('tokens/s', lambda r: r.tokens_per_sec, lambda r: f'{r.tokens_per_sec:,.0f}', True),
      ('wall time', lambda r: r.wall_seconds, lambda r: format_duration(r.wall_seconds),
       False),
  ]


def _best(values, higher: bool):
  finite = [v for v in values if not math.isnan(v)]
  if not finite:
    return None
  return max(finite) if higher else min(finite)


def _rows(results, mark):
  """Header and cells; `mark(text)` decorates the best cell of each scored column."""
  columns = _scored_columns(results)
  header = ['variant'] + [c[0] for c in columns] + ['config']
  best = [None if value is None else _best([value(r) for r in results], higher)
          for _, value, _, higher in columns]
  rows = []
  for r in results:
    cells = [r.name]
    for (_, value, cell, _), b in zip(columns, best):
      text = cell(r)
      cells.append(mark(text) if b is not None and value(r) == b else text)
    cells.append(f'{r.config_path} ({r.config_hash})')
    rows.append(cells)
  return header, rows


def markdown_table(results) -> str:
  """The report's table; the best value of each scored column is in bold."""
  header, rows = _rows(results, lambda t: f'**{t}**')
  aligns = [':---'] + ['---:'] * (len(header) - 2) + [':---']
  lines = ['| ' + ' | '.join(cells) + ' |' for cells in [header, aligns] + rows]
  return '\n'.join(lines)


def format_table(results) -> str:
  """The same table as aligned plain text for the terminal; '*' marks the best."""
  header, rows = _rows(results, lambda t: t + ' *')
  widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

  def line(cells):
    out = []
    for i, (cell, w) in enumerate(zip(cells, widths)):
      numeric = 0 < i < len(cells) - 1
      out.append(cell.rjust(w) if numeric else cell.ljust(w))
    return '  '.join(out).rstrip()

  rule = '  '.join('-' * w for w in widths)
  return '\n'.join([line(header), rule] + [line(r) for r in rows] +
                   ['* best in its column (wall time: lowest); † differs from '
                    f'{BASELINE} beyond its noise'])


_CSV_FIELDS = ('variant', 'config_path', 'config_hash', 'mlm_accuracy_token',
               'mlm_accuracy_own', 'downstream_metric', 'downstream_mean',
               'downstream_std', 'downstream_n', 'downstream_values', 'tokens_per_sec',
               'wall_seconds', 'steps', 'tokens', 'pretrain_loss', 'downstream_ci95',
               'pretrain_seeds', 'vs_baseline_difference', 'vs_baseline_p',
               'vs_baseline_p_holm', 'downstream_task')


def _csv_text(results) -> str:
  """Raw numbers (repr round-trips floats exactly), one row a variant and downstream
  task; undefined ones are empty."""
  def num(v):
    return '' if v is None or math.isnan(v) else repr(float(v))

  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator='\n')
  writer.writeheader()
  compared = comparisons(results)
  nan = stats.Comparison(math.nan, math.nan, math.nan, 0)
  for task in tasks(results) or ['']:
    for r in results:
      values = r.downstream.get(task, [])
      mean, std, n = downstream_stats(values)
      c = compared.get(task, {}).get(r.name, nan)
      writer.writerow(dict(
          variant=r.name, config_path=r.config_path, config_hash=r.config_hash,
          mlm_accuracy_token=num(r.mlm_accuracy_token),
          mlm_accuracy_own=num(r.mlm_accuracy_own), downstream_task=task,
          downstream_metric=r.downstream_metrics.get(task, ''), downstream_mean=num(mean),
          downstream_std=num(std), downstream_n=n,
          downstream_values=';'.join(repr(float(v)) for v in values),
          tokens_per_sec=num(r.tokens_per_sec), wall_seconds=num(r.wall_seconds),
          steps=r.steps, tokens=r.tokens, pretrain_loss=num(r.final_loss),
          downstream_ci95=num(stats.t_interval(units(r, task))[1]),
          pretrain_seeds=r.pretrain_seeds, vs_baseline_difference=num(c.difference),
          vs_baseline_p=num(c.p_value), vs_baseline_p_holm=num(c.p_holm)))
  return buf.getvalue()


def _save(fig, path: str) -> None:
  fig.savefig(path, format='png', dpi=120, bbox_inches='tight')


def _smooth(values) -> list[float]:
  """Centred moving average over ~2% of the points: unlike an EMA it does not lag, so
  the smoothed curve ends at the level the run actually reached."""
  half = len(values) // 100
  out = []
  for i in range(len(values)):
    window = values[max(0, i - half):i + half + 1]
    out.append(sum(window) / len(window))
  return out


def _no_data(ax, what: str) -> None:
  ax.text(0.5, 0.5, f'no {what}', ha='center', va='center', transform=ax.transAxes,
          color='gray')


def _plot_loss(results, path: str) -> None:
  """Raw losses faint, smoothed solid in the same colour (long curves are noisy)."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(8, 5))
  ax = fig.add_subplot()
  plotted = False
  for i, r in enumerate(results):
    if not r.loss_curve:
      continue
    steps, losses = zip(*r.loss_curve)
    color = f'C{i}'
    ax.plot(steps, losses, color=color, alpha=0.25, linewidth=1)
    ax.plot(steps, _smooth(losses), color=color, linewidth=2, label=r.name)
    plotted = True
  if plotted:
    ax.legend(title='variant')
  else:
    _no_data(ax, 'training-loss lines')
  ax.set_xlabel('step')
  ax.set_ylabel('training loss')
  ax.set_title('Pre-training loss (faint: raw, solid: centred moving average)')
  ax.grid(alpha=0.3)
  _save(fig, path)


def _zoom(ax, lows, highs) -> None:
  """Zoom the y-axis onto the data: differences of a point would be invisible from 0.
  Every bar is labelled with its value, so the cut axis cannot mislead."""
  lo, hi = min(lows), max(highs)
  pad = max(hi - lo, abs(hi) * 0.01, 1e-3) * 0.3
  ax.set_ylim(lo - pad, hi + pad)


def _plot_mlm(results, path: str) -> None:
  from matplotlib.figure import Figure
  fig = Figure(figsize=(8, 5))
  ax = fig.add_subplot()
  width = 0.38
  values = []
  for j, (label, attr) in enumerate([('token masking', 'mlm_accuracy_token'),
                                     ('own masking', 'mlm_accuracy_own')]):
    xs = [i + (j - 0.5) * width for i in range(len(results))]
    ys = [getattr(r, attr) for r in results]
    bars = ax.bar(xs, ys, width, label=label, color=f'C{j}')
    ax.bar_label(bars, labels=['' if math.isnan(y) else f'{y:.3f}' for y in ys],
                 fontsize=8, padding=2)
    values += [y for y in ys if not math.isnan(y)]
  if values:
    _zoom(ax, values, values)
  else:
    _no_data(ax, 'MLM evaluations')
  ax.set_xticks(range(len(results)), [r.name for r in results])
  ax.set_xlabel('variant')
  ax.set_ylabel('held-out MLM accuracy')
  ax.set_title('Held-out MLM accuracy (token masking is common to all variants)')
  ax.legend(title='evaluated under')
  ax.grid(axis='y', alpha=0.3)
  _save(fig, path)


def _plot_downstream(results, path: str) -> None:
  """One panel a downstream task: mean bars, 95% t-interval error bars and every
  independent value (see `units`) as a dot, so n and spread are visible."""
  from matplotlib.figure import Figure
  names = tasks(results) or ['']
  fig = Figure(figsize=(8, 5 * len(names)))
  for ax, task in zip(fig.subplots(len(names), 1, squeeze=False)[:, 0], names):
    _plot_task(ax, results, task)
  _save(fig, path)


def _plot_task(ax, results, task: str) -> None:
  metric = metric_name(results, task) if task else 'downstream'
  lows, highs = [], []
  for i, r in enumerate(results):
    values = units(r, task)
    mean, half = stats.t_interval(values)
    n = len(values)
    if n == 0:
      ax.annotate('no runs', (i, 0), xycoords=('data', 'axes fraction'), xytext=(0, 8),
                  textcoords='offset points', ha='center', color='gray')
      continue
    err = half if n > 1 else None
    ax.bar(i, mean, 0.6, yerr=err, capsize=6, color=f'C{i}', alpha=0.75)
    offsets = [0.0] if n == 1 else [-0.15 + 0.3 * k / (n - 1) for k in range(n)]
    ax.scatter([i + o for o in offsets], values, color='black', s=14, zorder=3,
               label='seeds' if not lows else None)
    top = max(mean + (err or 0.0), *values)
    label = f'{mean:.4f}' if n == 1 else f'{mean:.4f} ± {half:.4f}'
    ax.annotate(label, (i, top), xytext=(0, 4), textcoords='offset points', ha='center',
                fontsize=8)
    lows += [mean - (err or 0.0), *values]
    highs.append(top)
  if lows:
    _zoom(ax, lows, highs)
    ax.legend()
  else:
    _no_data(ax, 'downstream results')
  ax.set_xlim(-0.5, len(results) - 0.5)  # keeps variants without runs in view
  ax.set_xticks(range(len(results)), [r.name for r in results])
  ax.set_xlabel('variant')
  ax.set_ylabel(metric)
  ax.set_title(f'{task + ": " if task else ""}downstream {metric}: mean ± 95% t-interval '
               'over seeds, dots = seeds')
  ax.grid(axis='y', alpha=0.3)


def write_report(results: list[VariantResult], out_dir: str, *, title: str,
                 notes: Sequence[str] = ()) -> dict:
  """Writes report.md, report.csv and the three PNGs into `out_dir`; returns their paths."""
  if not results:
    raise ValueError('no variant results to report')
  table = markdown_table(results)  # first: it rejects mixed downstream metrics
  out = storage.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix='bertjax-report-') as local:
    for draw, name in zip((_plot_loss, _plot_mlm, _plot_downstream), _PLOTS):
      draw(results, os.path.join(local, name))
      with open(os.path.join(local, name), 'rb') as f:
        storage.write_atomic(out / name, f.read())
  lines = [
      f'# {title}', '',
      budget_line(results), '',
      table, '',
      'MLM accuracy is measured on held-out data. Token masking is the same for every '
      'variant, so that column compares them; own masking uses each variant\'s '
      'pre-training masking and is not comparable across variants. Downstream (one '
      'column group a task): mean ± the half-width of its 95% t-interval over n seeds. '
      'Bold: best in its column (wall time: lowest).', '',
      '## Statistics', '',
      variance_line(results), '',
      *[line for text in significance_lines(results) for line in (text, '')],
      '![Pre-training loss](loss_curves.png)', '',
      '![Held-out MLM accuracy](mlm_accuracy.png)', '',
      '![Downstream metric](downstream.png)', '',
  ]
  if notes:
    lines += ['## Notes', ''] + [f'- {note}' for note in notes] + ['']
  storage.write_atomic(out / 'report.md', '\n'.join(lines))
  storage.write_atomic(out / 'report.csv', _csv_text(results))
  return {'markdown': os.fspath(out / 'report.md'), 'csv': os.fspath(out / 'report.csv'),
          'plots': [os.fspath(out / name) for name in _PLOTS]}
