"""`bertjax bench --suite FILE.py:NAME`: several shapes in one run, each against its targets.

The experiment file's `get_suite(name)` returns entries like
  dict(config='model=base,batch=256,dtype=bfloat16', min_mfu=0.45,
       max_compile_s=60, peers=dict(versus='eager', min_ratio=2.0))
where `config` is the file's own `get_config` arg and every target is optional. Each
entry is measured as `bertjax bench` would; one with `peers` also runs beside
`transformers`, interleaved. The result is a markdown table ready for
docs/PERFORMANCE.md, with each target marked met, missed or not measured.
"""
from __future__ import annotations

import json

from bertjax import config_checks, config_lib
from bertjax.bench import peers, step
from bertjax.errors import UserError

_ENTRY_KEYS = {'config', 'min_mfu', 'max_compile_s', 'peers'}
_PEER_KEYS = {'versus', 'min_ratio'}


# What `peers=dict(versus=...)` may name: one peer's row, or whichever peer was fastest.
_VERSUS = dict(eager=peers.TORCH_EAGER, compile=peers.TORCH_COMPILE, flax=peers.FLAX,
               fastest='fastest peer')


def load_suite(spec: str) -> tuple[str, list[dict]]:
  """The experiment file's path and its `get_suite(name)` entries, checked."""
  get_suite, name = config_lib.load_experiment(spec, 'get_suite', flag='--suite')
  path = spec.partition(':')[0]
  entries = get_suite(name)
  for entry in entries:
    unknown = sorted(set(entry) - _ENTRY_KEYS) + sorted(set(entry.get('peers', {})) - _PEER_KEYS)
    if unknown:
      raise UserError(f'{path}: suite {name!r} entry {entry} has unknown keys {unknown}; '
                      f'entries take {sorted(_ENTRY_KEYS)}, peers take {sorted(_PEER_KEYS)}')
    if 'config' not in entry:
      raise UserError(f'{path}: suite {name!r} entry {entry} has no config (a get_config arg)')
    versus = entry.get('peers', {}).get('versus', 'fastest')
    if versus not in _VERSUS:
      raise UserError(f'{path}: peers versus={versus!r}; use one of {sorted(_VERSUS)}')
  return path, entries


def _judge(want: float | None, got: float | None, *, at_least: bool) -> bool | None:
  if want is None or got is None:
    return None
  return got >= want if at_least else got <= want


def _peer_ratio(rows: list[dict], versus: str) -> float | None:
  measured = [r for r in rows if r['system'] != 'bertjax' and r['tokens_per_sec']]
  if versus != 'fastest':
    measured = [r for r in measured if r['system'] == _VERSUS[versus]]
  if not measured:
    return None
  return 1 / max(measured, key=lambda r: r['tokens_per_sec'])['ratio_to_bertjax']


def run_entry(path: str, entry: dict, overrides: list[str], *, steps_to_time: int,
              rounds: int) -> dict:
  config = config_lib.load_config(f'{path}:{entry["config"]}')
  config_lib.apply_overrides(config, overrides)
  config_checks.validate(config)
  compiled = step.compile_step(config)
  result = step.measure(config, steps_to_time=steps_to_time, step=compiled)
  targets = []
  if 'min_mfu' in entry:
    mfu = result['mfu']
    targets.append(dict(name='MFU', want=f'>= {100 * entry["min_mfu"]:.0f}%', got=mfu,
                        shown=None if mfu is None else f'{100 * mfu:.1f}%',
                        met=_judge(entry['min_mfu'], mfu, at_least=True)))
  if 'max_compile_s' in entry:
    targets.append(dict(name='compile', want=f'<= {entry["max_compile_s"]:g} s',
                        got=result['compile_seconds'],
                        shown=f'{result["compile_seconds"]:.1f} s',
                        met=_judge(entry['max_compile_s'], result['compile_seconds'],
                                   at_least=False)))
  if 'peers' in entry:
    versus = entry['peers'].get('versus', 'fastest')
    rows = peers.compare(config, rounds=rounds, steps_per_round=steps_to_time, ours=compiled)
    ratio = _peer_ratio(rows, versus)
    result.update(peers=rows, peer_ratio=ratio)
    want = entry['peers'].get('min_ratio')
    if want is not None:
      targets.append(dict(name=f'bertjax / {_VERSUS[versus]}', want=f'>= {want:g}x',
                          got=ratio, shown=None if ratio is None else f'{ratio:.2f}x',
                          met=_judge(want, ratio, at_least=True)))
  return dict(entry=entry['config'], result=result, targets=targets)


def _mark(met: bool | None) -> str:
  return {True: 'met', False: '**missed**', None: 'not measured'}[met]


def format_suite(path: str, name: str, rows: list[dict]) -> str:
  first = rows[0]['result']
  lines = [f'{first["device"]}; `bertjax bench --suite {path}:{name}`', '',
           '| config | compile | step (median) | tokens/s | MFU or FLOP/s per device '
           '| peak memory | targets |',
           '| --- | ---: | ---: | ---: | ---: | ---: | --- |']
  for row in rows:
    r = row['result']
    speed = (f'{100 * r["mfu"]:.1f}%' if r['mfu'] is not None
             else f'{r["flops_per_sec_per_device"] / 1e12:.3f} T')
    memory = ('-' if r['peak_memory_bytes'] is None
              else f'{r["peak_memory_bytes"] / 2**30:.1f} GiB')
    targets = '; '.join(f'{t["name"]} {t["shown"] or "-"} (target {t["want"]}): '
                        f'{_mark(t["met"])}' for t in row['targets']) or '-'
    lines.append(f'| {row["entry"]} | {r["compile_seconds"]:.1f} s | '
                 f'{r["step_time"] * 1e3:,.1f} ms | {r["tokens_per_sec"]:,.0f} | {speed} | '
                 f'{memory} | {targets} |')
  for row in rows:
    if 'peers' in row['result']:
      lines += ['', f'Beside the peers, {row["entry"]} (median tokens/s of interleaved rounds):',
                '', '```', peers.format_table(row['result']['peers']), '```']
  judged = [t['met'] for row in rows for t in row['targets']]
  lines += ['', f'targets: {judged.count(True)} met, {judged.count(False)} missed, '
                f'{judged.count(None)} not measured']
  return '\n'.join(lines)


def run(spec: str, overrides: list[str], *, steps_to_time: int, rounds: int,
        as_json: bool) -> list[dict]:
  path, entries = load_suite(spec)
  rows = []
  for entry in entries:
    rows.append(run_entry(path, entry, overrides, steps_to_time=steps_to_time, rounds=rounds))
    if not as_json:  # a long suite shows each shape as it finishes
      print(f'measured {entry["config"]}: {rows[-1]["result"]["tokens_per_sec"]:,.0f} tokens/s',
            flush=True)
  print(json.dumps(rows) if as_json else '\n' + format_suite(path, spec.partition(':')[2], rows))
  return rows
