"""The profile summariser: top ops of a jax.profiler trace, as a markdown table."""
from __future__ import annotations

import dataclasses
import json
import os


from bertjax.bench import profile_summary
from bertjax.cli import main

from conftest import ROOT

BENCH = os.path.join(ROOT, 'experiments', 'bench.py')


@dataclasses.dataclass
class _Event:
  name: str
  start_ns: float
  duration_ns: float
  stats: tuple = ()


def test_an_op_counts_its_own_time_less_the_ops_inside_it():
  events = [_Event('ThunkExecutor::Execute', 0, 100), _Event('fusion.1', 10, 50),
            _Event('dot.2', 20, 30), _Event('copy.3', 70, 20)]
  assert {e.name: ns for e, ns in profile_summary._self_times(events)} == {
      'ThunkExecutor::Execute': 30, 'fusion.1': 20, 'dot.2': 30, 'copy.3': 20}
  assert profile_summary._module(_Event('dot.2', 0, 1, (('hlo_module', 'jit_step'),))) == \
      'jit_step'
  assert not profile_summary._is_op('ThunkExecutor::Execute')
  assert not profile_summary._is_op('$step.py:95 run')
  assert profile_summary._is_op('fusion.1')


def test_bench_profile_traces_the_step_and_the_module_summarises_it(tmp_path, capsys,
                                                                     monkeypatch):
  monkeypatch.setenv('BERTJAX_COMPILATION_CACHE', 'off')
  trace = tmp_path / 'profile'
  assert main(['bench', '--config', BENCH + ':local', '--steps', '1', '--profile', str(trace),
               '--config.mesh.data=1']) == 0
  out = capsys.readouterr().out
  assert '| op | module | time | share | calls |' in out and 'jit_train_step' in out
  assert 'host time summed over the CPU threads' in out
  assert profile_summary.main([str(trace), '--top', '5', '--json']) == 0
  summary = json.loads(capsys.readouterr().out)
  assert len(summary['ops']) == 5 and summary['distinct_ops'] > 5
  shares = [o['share'] for o in summary['ops']]
  assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
  assert all(o['count'] >= 3 for o in summary['ops'])  # three steps traced


def test_a_directory_without_a_trace_is_one_clear_line(tmp_path, capsys):
  assert profile_summary.main([str(tmp_path)]) == 2
  assert 'no jax.profiler trace' in capsys.readouterr().err
