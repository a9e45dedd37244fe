"""`bertjax bench` measures what it says, and the peer comparison runs."""
import json
import os

import pytest

from bertjax import config_lib, flax_peer, flops
from bertjax.cli import main

from conftest import ROOT

BENCH = os.path.join(ROOT, 'experiments', 'bench.py')


def test_bench_reports_throughput_as_json(capsys, tmp_path):
  assert main(['bench', '--config', BENCH + ':local', '--steps', '3', '--json',
               '--data', str(tmp_path), '--config.mesh.data=1']) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result['batch'] == 8 and result['seq_len'] == 64
  assert result['tokens_per_sec'] == pytest.approx(8 * 64 / result['step_time'])
  assert result['compile_seconds'] > 0 and result['flops_per_sec_per_device'] > 0
  assert result['mfu'] is None  # no known peak for a CPU: achieved FLOP/s instead
  assert 0.5 < result['padding_efficiency'] <= 1.0


def test_flops_match_design_figures():
  from bertjax import train
  for model, want in (('base', 0.55e9), ('large', 1.9e9)):
    c = config_lib.load_config(f'{BENCH}:model={model}')
    got = flops.train_flops_per_token(train.model_config(c, 30522), 128, 20)
    assert got == pytest.approx(want, rel=0.02)


def test_peers_side_by_side(capsys, tmp_path, monkeypatch):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  from bertjax import peers
  monkeypatch.setenv(flax_peer.DIR_ENV, str(tmp_path))  # no transformers 4.x there
  config = config_lib.load_config(BENCH + ':local')
  config_lib.apply_overrides(config, ['mesh.data=1'])
  rows = peers.compare(config, rounds=1, steps_per_round=1, with_compile=False)
  assert [r['system'] for r in rows] == ['bertjax', peers.TORCH_EAGER, peers.FLAX]
  assert rows[0]['ratio_to_bertjax'] == 1.0 and rows[1]['tokens_per_sec'] > 0
  assert rows[2]['tokens_per_sec'] is None and 'pip install --target' in rows[2]['skipped']
  table = peers.format_table(rows)
  assert 'bertjax / fastest peer' in table and 'skipped: transformers 4.x not installed' in table


@pytest.mark.skipif(not flax_peer.installed(), reason='no transformers 4.x for the Flax peer')
def test_flax_peer_trains_in_its_subprocess():
  from bertjax import peers
  config = config_lib.load_config(BENCH + ':local')
  run = peers._flax_runner(config)
  try:
    run(1)  # a step after compile and warm-up, answered over the pipe
  finally:
    run.close()
