"""The persistent compilation cache: where it lives, and a second process finds it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from bertjax import compilation_cache

from conftest import ROOT


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  monkeypatch.delenv(compilation_cache.ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compilation_cache.cache_dir() == str(tmp_path / 'bertjax' / 'jax')
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/somewhere/jax')
  assert compilation_cache.cache_dir() == '/somewhere/jax'  # JAX's own variable is kept
  monkeypatch.setenv(compilation_cache.ENV, 'gs://bucket/cache')
  assert compilation_cache.cache_dir() == 'gs://bucket/cache'
  monkeypatch.setenv(compilation_cache.ENV, 'off')
  assert compilation_cache.cache_dir() is None


def _bench_in_a_new_process(cache):
  env = dict(os.environ, BERTJAX_COMPILATION_CACHE=str(cache),
             # The tiny step compiles in under JAX's default one-second threshold.
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  run = subprocess.run([sys.executable, '-m', 'bertjax', 'bench', '--config',
                        os.path.join(ROOT, 'experiments', 'bench.py') + ':local',
                        '--compile_only', '--json', '--config.mesh.data=1'],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert run.returncode == 0, run.stderr
  return json.loads(run.stdout.strip().splitlines()[-1])['compilation_cache']


def test_a_second_bench_process_finds_the_compiled_step(tmp_path):
  cache = tmp_path / 'cache'
  first = _bench_in_a_new_process(cache)
  assert first['dir'] == str(cache) and first['hits'] == 0 and first['misses'] >= 1
  entries = sorted(os.listdir(cache))
  assert any(name.startswith('jit_train_step') for name in entries)
  second = _bench_in_a_new_process(cache)
  assert second['hits'] >= 1 and second['misses'] == 0
  assert sorted(os.listdir(cache)) == entries  # nothing compiled anew
