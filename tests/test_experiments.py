"""Every experiment file loads, its documented variants validate, and its :local
variant trains for a few steps."""
import glob
import json
import os
import re

import pytest

from bertjax import config_checks, config_lib, finetune, train
from bertjax.compare import sweep
from bertjax.errors import UserError

from conftest import ROOT

# common.py holds the recipes the experiment files share; it is not one itself.
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(ROOT, 'experiments', '*.py'))
                     if os.path.basename(p) != 'common.py')


def documented_variants():
  """Every `--config experiments/FILE.py[:arg]` in the experiment files' docstrings,
  and every config of the `--suite FILE.py:NAME` suites they name."""
  for path in EXPERIMENTS:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    for spec in re.findall(r'--config (experiments/\S+\.py(?::\S+)?)', text):
      yield os.path.join(ROOT, spec)
    for spec in re.findall(r'--suite (experiments/\S+\.py:\S+)', text):
      get_suite, name = config_lib.load_experiment(os.path.join(ROOT, spec), 'get_suite')
      for entry in get_suite(name):
        yield os.path.join(ROOT, f'{spec.partition(":")[0]}:{entry["config"]}')


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


@pytest.mark.parametrize('spec', sorted(set(documented_variants())),
                         ids=lambda s: os.path.relpath(s, ROOT))
def test_documented_variant_validates(spec, tmp_path):
  # Weights named in the docs (runs/base, gs://...) stand for any directory.
  spec = re.sub(r'init=[^,]+', f'init={tmp_path}', spec)
  config = config_lib.load_config(spec)
  if 'cudnn' in spec and not config_checks._nvidia_gpu():
    with pytest.raises(UserError, match='needs an NVIDIA GPU'):
      config_checks.validate(config)
    return
  config_checks.validate(config)


def test_recipe_import_works_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for name in ('bert_base.py', 'bert_large.py', 'bert_base_wwm.py', 'bert_base_span.py'):
    config = config_lib.load_config(os.path.join(ROOT, 'experiments', name)
                                    + f':phase=2,init={tmp_path}')
    assert (config.init, config.data.seq_len) == (str(tmp_path), 512)
  span = config_lib.load_config(os.path.join(ROOT, 'experiments', 'bert_base_span.py'))
  assert span.data.masking.kind == 'span'


@pytest.fixture(scope='module')
def quickstart_run(tmp_path_factory):
  """quickstart.py:local end to end, as documented: its variant's run, the weights the
  fine-tuning variants start from and phase 1 for the phase-2 test."""
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  results = train.train_and_evaluate(
      config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py:local')), workdir)
  return workdir, results


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_local_variant_trains(path, tmp_path, quickstart_run):
  config = config_lib.load_config(path + ':local')
  if kind(config) == 'sweep':  # tests/test_compare.py runs a shrunken sweep
    sweep.validate(config)
    return
  if os.path.basename(path) == 'quickstart.py':  # the fixture ran it unchanged
    assert quickstart_run[1]['mlm_predictions'] > 0
    return
  # Two steps and two eval batches run every piece a variant has; more repeat them.
  shrink = ['train.steps=2', 'train.log_every=1']
  if kind(config) == 'pretrain':
    config_lib.apply_overrides(config, shrink + ['train.eval_batches=2'])
    assert train.train_and_evaluate(config, str(tmp_path))['mlm_predictions'] > 0
    return
  config = config_lib.load_config(f'{path}:local,init={quickstart_run[0]}')
  config_lib.apply_overrides(config, shrink)
  results = finetune.finetune_and_evaluate(config, str(tmp_path))
  assert config.task.metric in results


def test_phase_two_continues_from_phase_one(tmp_path, quickstart_run):
  # Phase 1 is any tiny pre-trained workdir that has learnt something: quickstart's.
  base = os.path.join(ROOT, 'experiments', 'bert_base.py')
  phase1 = quickstart_run[0]
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
