"""`bertjax compare`: a shrunken masking sweep runs, reports, logs the same numbers
and resumes; bad sweep configs fail naming the key."""
import csv
import json
import os

import jax
import pytest

from bertjax import config_lib
from bertjax.compare import sweep
from bertjax.cli import main
from bertjax.errors import UserError

from conftest import ROOT

SWEEP = os.path.join(ROOT, 'experiments', 'masking_sweep.py')
SHRINK = ["variants=('token','span')", 'downstream_seeds=(0,)',
          'pretrain.train.steps=4', 'pretrain.train.log_every=2',
          'pretrain.train.checkpoint_every=4', 'pretrain.train.eval_batches=2',
          'pretrain.train.batch_size=16', 'pretrain.data.embedded_documents=400',
          'pretrain.optim.warmup_steps=1', 'downstream.train.steps=2',
          'downstream.train.log_every=1']


def test_bad_sweep_configs_name_the_key():
  config = config_lib.load_config(SWEEP + ':local')
  config_lib.apply_overrides(config, ['variants=()'])
  with pytest.raises(UserError, match='the sweep config lists no variants'):
    sweep.validate(config)
  config_lib.apply_overrides(config, ["variants=('token','spam')"])
  with pytest.raises(UserError, match=r"variants \['spam'\] are not masking kinds"):
    sweep.validate(config)
  pretrain_only = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py'))
  with pytest.raises(UserError, match="the sweep config has no 'variants'"):
    sweep.validate(pretrain_only)


@pytest.fixture
def restores_the_compile_cache_settings():
  # sweep.run sets JAX's persistent compilation cache (process-wide) for its own
  # workdir; the tests after this one keep the suite's settings.
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  before = {name: getattr(jax.config, name) for name in names}
  yield
  for name, value in before.items():
    jax.config.update(name, value)


def test_shrunken_sweep_reports_logs_and_resumes(tmp_path, capsys,
                                                 restores_the_compile_cache_settings):
  workdir = str(tmp_path)
  argv = ['compare', '--config', SWEEP + ':local', '--workdir', workdir,
          *(f'--config.{o}' for o in SHRINK)]
  assert main(argv) == 0
  out = capsys.readouterr().out
  assert 'token' in out and 'span' in out
  with open(os.path.join(workdir, 'report.md')) as f:
    markdown = f.read()
  table = [line for line in markdown.splitlines()
           if line.startswith('| ') and not set(line) <= set('|:- ')]
  assert len(table) == 1 + 2  # header + one row a variant
  assert f'{SWEEP}:local' in markdown
  with open(os.path.join(workdir, 'report.csv')) as f:
    rows = {r['variant']: r for r in csv.DictReader(f)}
  assert set(rows) == {'token', 'span'}
  for name in ('loss_curves.png', 'mlm_accuracy.png', 'downstream.png'):
    with open(os.path.join(workdir, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The report's numbers are the ones the runs logged.
  with open(os.path.join(workdir, 'span', 'pretrain', 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  compare_line = [r for r in logged if 'compare_mlm_accuracy_token_masking' in r][-1]
  assert float(rows['span']['mlm_accuracy_token']) == pytest.approx(
      compare_line['compare_mlm_accuracy_token_masking'])
  assert float(rows['span']['mlm_accuracy_own']) == pytest.approx(
      [r for r in logged if 'eval_mlm_accuracy' in r][-1]['eval_mlm_accuracy'])
  metric = config_lib.load_config(SWEEP + ':local').downstream.task.metric
  with open(os.path.join(workdir, 'span', 'downstream_0', 'best.json')) as f:
    best = json.load(f)['metrics'][metric]
  assert float(rows['span']['downstream_mean']) == pytest.approx(best)
  expected_hash = config_lib.config_hash(sweep.variant_config(
      config_lib.apply_overrides(config_lib.load_config(SWEEP + ':local'), SHRINK), 'span'))
  assert rows['span']['config_hash'] == expected_hash
  # Finished variants are read back, not trained again.
  sizes = {v: os.path.getsize(os.path.join(workdir, v, 'pretrain', 'metrics.jsonl'))
           for v in rows}
  assert main(argv) == 0
  assert 'done before, read back' in capsys.readouterr().out
  assert sizes == {v: os.path.getsize(os.path.join(workdir, v, 'pretrain', 'metrics.jsonl'))
                   for v in rows}
