"""The top ops of a `jax.profiler` trace by time, as a markdown table.

  python -m bertjax.bench.profile_summary WORKDIR/profile [--top 20] [--json]

reads the newest trace under the directory (`bertjax train --profile` and `bertjax
bench --profile DIR` write them: plugins/profile/RUN/HOST.xplane.pb) with JAX's own
reader (`jax.profiler.ProfileData`), so it runs on any machine, a CPU included, on a
trace taken elsewhere. On a GPU or TPU it sums the device's "XLA Ops" line, op by op.
A CPU trace has no device: the ops run on host threads, inside runtime scopes
(`ThunkExecutor::Execute`, thread-pool waits) that are left out; each op counts its
own time there, less the ops nested inside it.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys

from bertjax.errors import UserError

_DEVICE_OPS_LINE = 'XLA Ops'
_HOST_LINES_SKIPPED = ('python',)  # Python frames, not ops


def newest_trace(directory: str) -> list[str]:
  """The .xplane.pb files (one a host) of the newest run under `directory`."""
  found = glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True)
  if not found:
    raise UserError(f'no jax.profiler trace (*.xplane.pb) under {directory}; write one with '
                    '`bertjax train --profile` or `bertjax bench --profile DIR`')
  newest_run = max({os.path.dirname(f) for f in found}, key=os.path.getmtime)
  return sorted(f for f in found if os.path.dirname(f) == newest_run)


def _is_op(name: str) -> bool:
  # Runtime scopes are C++ names (Class::Method); Python frames start with '$';
  # 'end: ...' are markers. XLA op names (fusion.3, dot.8, ...) are none of these.
  return '::' not in name and not name.startswith(('$', 'end: '))


def _module(event) -> str:
  """The XLA module (jitted function) an op event belongs to, where the trace says."""
  for key, value in event.stats:
    if key == 'hlo_module':
      return str(value)
  return '-'


def _self_times(events) -> list[tuple[object, float]]:
  """(event, own time in ns) of each event on one line, less the events nested in it.
  `events` are ProfileData events or anything with name, start_ns and duration_ns."""
  events = sorted(events, key=lambda e: (e.start_ns, -e.duration_ns))
  own, stack = [], []  # own: (event, own ns); stack: (end_ns, index into own)
  for e in events:
    while stack and stack[-1][0] <= e.start_ns:
      stack.pop()
    if stack:
      parent = stack[-1][1]
      own[parent] = (own[parent][0], own[parent][1] - e.duration_ns)
    own.append((e, e.duration_ns))
    stack.append((e.start_ns + e.duration_ns, len(own) - 1))
  return own


def summarise(paths: list[str], top: int = 20) -> dict:
  from jax.profiler import ProfileData
  totals, counts = collections.Counter(), collections.Counter()
  source = None
  planes = [plane for path in paths for plane in ProfileData.from_file(path).planes]
  device_lines = [line for plane in planes if plane.name.startswith('/device:')
                  for line in plane.lines if line.name == _DEVICE_OPS_LINE]
  if device_lines:
    source = f'device time, the {_DEVICE_OPS_LINE!r} line of ' + ', '.join(sorted(
        {p.name for p in planes if p.name.startswith('/device:')}))
    timed = [(e, e.duration_ns) for line in device_lines for e in line.events]
  else:
    source = ('host time summed over the CPU threads that ran XLA ops (own time, runtime '
              'scopes left out)')
    timed = [pair for plane in planes if plane.name.startswith('/host:')
             for line in plane.lines if line.name not in _HOST_LINES_SKIPPED
             for pair in _self_times(line.events)]
  for event, ns in timed:
    if _is_op(event.name) and ns > 0:
      key = (_module(event), event.name)
      totals[key] += ns
      counts[key] += 1
  total = sum(totals.values())
  if not total:
    raise UserError(f'the trace in {os.path.dirname(paths[0])} holds no timed XLA ops; '
                    'trace a few steps after compilation')
  ops = [dict(module=module, op=name, ms=ns / 1e6, share=ns / total,
              count=counts[module, name])
         for (module, name), ns in totals.most_common(top)]
  return dict(trace=os.path.dirname(paths[0]), source=source, total_ms=total / 1e6,
              distinct_ops=len(totals), ops=ops)


def format_table(summary: dict) -> str:
  lines = [f'Top {len(summary["ops"])} of {summary["distinct_ops"]} ops by {summary["source"]}; '
           f'{summary["total_ms"]:,.1f} ms in all (`{summary["trace"]}`)', '',
           '| op | module | time | share | calls |', '| --- | --- | ---: | ---: | ---: |']
  lines += [f'| `{o["op"]}` | {o["module"]} | {o["ms"]:,.2f} ms | {100 * o["share"]:.1f}% '
            f'| {o["count"]} |' for o in summary['ops']]
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m bertjax.bench.profile_summary',
      description='Top ops by time of the newest jax.profiler trace under a directory.')
  parser.add_argument('trace_dir', help='e.g. WORKDIR/profile')
  parser.add_argument('--top', type=int, default=20)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  try:
    summary = summarise(newest_trace(args.trace_dir), top=args.top)
  except UserError as e:
    print(f'bertjax: error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(summary) if args.json else format_table(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
