"""Every experiment file loads, and its :local variant trains for a few steps."""
import glob
import json
import os

import pytest

from bertjax import compare, config_lib, finetune, train
from bertjax.errors import UserError

from conftest import ROOT

EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, 'experiments', '*.py')))


def kind(config):
  if 'variants' in config:
    return 'sweep'
  return 'finetune' if finetune.is_finetune_config(config) else 'pretrain'


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_full_config_loads(path):
  config = config_lib.load_config(path)
  if kind(config) == 'sweep':
    config = config.pretrain
  assert config.model.num_layers > 0
  assert config.train.steps > 0 or config.train.epochs > 0


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train.train_and_evaluate(
      config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py:local')), workdir)
  return workdir


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_local_variant_trains(path, tmp_path, pretrained):
  config = config_lib.load_config(path + ':local')
  if kind(config) == 'sweep':  # tests/test_compare.py runs a shrunken sweep
    compare.validate(config)
    return
  config_lib.apply_overrides(config, ['train.steps=2', 'train.log_every=1'])
  if kind(config) == 'pretrain':
    assert train.train_and_evaluate(config, str(tmp_path))['mlm_predictions'] > 0
    return
  config = config_lib.load_config(f'{path}:local,init={pretrained}')
  config_lib.apply_overrides(config, ['train.steps=2', 'train.log_every=1'])
  results = finetune.finetune_and_evaluate(config, str(tmp_path))
  assert config.task.metric in results


def test_phase_two_continues_from_phase_one(tmp_path):
  base = os.path.join(ROOT, 'experiments', 'bert_base.py')
  phase1 = str(tmp_path / 'phase1')
  quick_learner = config_lib.apply_overrides(config_lib.load_config(base + ':local'), [
      'train.steps=30', 'optim.learning_rate=5e-3'])
  train.train_and_evaluate(quick_learner, phase1)
  phase2 = str(tmp_path / 'phase2')
  config = config_lib.load_config(f'{base}:local,phase=2,init={phase1}')
  assert config.data.seq_len == 2 * config_lib.load_config(base + ':local').data.seq_len
  train.train_and_evaluate(config, phase2)
  with open(os.path.join(phase2, 'metrics.jsonl')) as f:
    first = json.loads(f.readline())
  with open(os.path.join(phase1, 'metrics.jsonl')) as f:
    phase1_losses = [json.loads(line)['loss'] for line in f if '"loss"' in line]
  # Started from phase 1's weights, not from scratch (where the loss is ~ln V + ln 2).
  assert first['loss'] < phase1_losses[0] - 0.5
  with pytest.raises(UserError, match='phase 2 continues from phase 1'):
    config_lib.load_config(base + ':phase=2')


def test_recipe_follows_bert():
  c = config_lib.load_config(os.path.join(ROOT, 'experiments', 'bert_base.py'))
  assert (c.optim.learning_rate, c.optim.b1, c.optim.b2, c.optim.eps) == (1e-4, 0.9, 0.999, 1e-6)
  assert (c.optim.weight_decay, c.optim.warmup_steps, c.optim.clip_norm) == (0.01, 10_000, 1.0)
  assert (c.train.batch_size, c.data.seq_len, c.data.masking.max_predictions) == (256, 128, 20)
  large = config_lib.load_config(os.path.join(ROOT, 'experiments', 'bert_large.py'))
  assert (large.model.num_layers, large.model.hidden_size) == (24, 1024)
