"""`bertjax bench` reports XLA's memory analysis of the compiled step on every backend;
`--compile_only` compiles from shapes alone and stops."""
from __future__ import annotations

import json
import os

import pytest

from bertjax.bench import step
from bertjax.cli import main

from conftest import ROOT

BENCH = os.path.join(ROOT, 'experiments', 'bench.py')


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
  monkeypatch.setenv('BERTJAX_COMPILATION_CACHE', 'off')


def _compile_only(capsys, *overrides):
  assert main(['bench', '--config', BENCH + ':local', '--compile_only', '--json',
               '--config.mesh.data=1', '--config.model.scan_layers=true', *overrides]) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_compile_only_reports_memory_analysis_and_remat_lowers_temporaries(capsys):
  plain = _compile_only(capsys)
  assert 'step_time' not in plain and plain['remat'] == 'none' and plain['scan_layers']
  memory = plain['compiled_memory']
  assert set(memory) == set(step.MEMORY_FIELDS)
  # Donated state: the outputs alias the arguments.
  assert memory['argument'] > 0 and memory['alias'] > 0 and memory['temp'] > 0
  rematerialised = _compile_only(capsys, '--config.model.remat=full')
  assert rematerialised['compiled_memory']['temp'] < memory['temp']
  assert 'temp' in step.format_table(plain) and 'remat none' in step.format_table(plain)


def test_compile_only_goes_alone(capsys):
  assert main(['bench', '--config', BENCH + ':local', '--compile_only', '--peers']) == 2
  assert 'drop --peers' in capsys.readouterr().err
