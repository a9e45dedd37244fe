"""`bertjax bench --ablate`: the variants time what they say, beside the matmul floor."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from bertjax import config_lib
from bertjax.bench import ablation
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.models import layers

from conftest import ROOT

BENCH = os.path.join(ROOT, 'experiments', 'bench.py')


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
  monkeypatch.setenv('BERTJAX_COMPILATION_CACHE', 'off')


def _local_config():
  config = config_lib.load_config(BENCH + ':local')
  return config_lib.apply_overrides(config, ['mesh.data=1'])


def test_ablation_table_as_json_with_floor_and_unmeasured_cudnn(capsys):
  assert main(['bench', '--config', BENCH + ':local', '--ablate',
               'forward,cudnn_attention', '--steps', '1', '--rounds', '2',
               '--json', '--config.mesh.data=1']) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  rows = {r['name']: r for r in result['rows']}
  assert list(rows) == ['full', 'forward', 'cudnn_attention']
  assert 'NVIDIA GPU' in rows['cudnn_attention']['not_measured']  # this is a CPU
  assert result['matmul']['flops_per_sec'] > 0
  full, forward = rows['full'], rows['forward']
  assert full['vs_full'] == 0 and full['step_time'] > 0
  assert forward['flops'] == pytest.approx(full['flops'] / 3)
  assert full['matmul_floor'] == pytest.approx(full['flops'] / result['matmul']['flops_per_sec'])
  assert full['compiled_memory']['temp'] > forward['compiled_memory']['temp']
  table = ablation.format_table(result)
  assert 'not measured' in table and 'forward + loss only' in table


def test_threefry_variant_draws_masks_from_jax_random_bernoulli_while_tracing_only():
  key = jax.random.key(3)
  ours = np.asarray(layers.keep_mask(key, 0.1, (4, 64)))
  with ablation._dropout_generator(threefry=True):
    swapped = np.asarray(layers.dropout(np.ones((4, 64), np.float32), 0.1,
                                        _Rngs(key)) != 0)
  assert np.array_equal(swapped, np.asarray(jax.random.bernoulli(key, 0.9, (4, 64))))
  assert not np.array_equal(swapped, ours)
  assert np.array_equal(np.asarray(layers.keep_mask(key, 0.1, (4, 64))), ours)  # restored


class _Rngs:
  """What layers.dropout draws its key from."""

  def __init__(self, key):
    self.key = key

  def dropout(self):
    return self.key


def test_ablation_compiles_each_variant_from_its_own_config(monkeypatch):
  compiled, gradients = [], []
  monkeypatch.setattr(ablation.step_lib, 'compile_step',
                      lambda config: compiled.append(config) or _FakeStep())
  monkeypatch.setattr(ablation, '_gradient_runners', lambda config, stage: gradients.append(
      stage) or (_FakeStep.run, 0.0, None))
  variants = ablation.select('no_dropout,xla_attention,no_optimizer')
  result = ablation.measure(_local_config(), variants, rounds=1, steps_per_round=1)
  assert [r['name'] for r in result['rows']] == ['full', 'no_dropout', 'no_optimizer',
                                                 'xla_attention']
  assert gradients == ['grads']
  full, no_dropout, xla = compiled
  assert full.model.dropout_rate == 0.1 and full.model.attention_dropout_rate == 0.1
  assert no_dropout.model.dropout_rate == 0 and no_dropout.model.attention_dropout_rate == 0
  assert xla.model.dropout_rate == 0.1 and xla.model.attention_dropout_rate == 0


class _FakeStep:
  run = staticmethod(lambda n: None)
  compile_seconds, memory = 0.0, None


def test_unknown_variant_is_one_clear_line(capsys):
  with pytest.raises(UserError, match='unknown variant.*no_dropout'):
    ablation.select('no_dropout,fast')
  assert main(['bench', '--config', BENCH + ':local', '--ablate', '--peers']) == 2
  assert 'drop --peers' in capsys.readouterr().err
