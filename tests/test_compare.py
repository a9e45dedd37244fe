"""`bertjax compare`: a shrunken masking sweep runs, reports, logs the same numbers
and resumes; bad sweep configs fail naming the key."""
import csv
import json
import os

import pytest

from bertjax import config_lib, finetune, train
from bertjax.compare import sweep
from bertjax.cli import main
from bertjax.errors import UserError

from conftest import ROOT

SWEEP = os.path.join(ROOT, 'experiments', 'masking_sweep.py')
SHRINK = ["variants=('token','span_sbo','pmi')", 'downstream_seeds=(0,)',
          'pretrain.train.steps=4', 'pretrain.train.log_every=2',
          'pretrain.train.checkpoint_every=4', 'pretrain.train.eval_batches=2',
          'pretrain.train.batch_size=16', 'pretrain.data.embedded_documents=400',
          'pretrain.optim.warmup_steps=1', 'downstream.train.steps=2',
          'downstream.train.log_every=1', 'more_downstream.word_order.train.steps=2',
          'more_downstream.word_order.train.log_every=1']


def test_bad_sweep_configs_name_the_key():
  config = config_lib.load_config(SWEEP + ':local')
  config_lib.apply_overrides(config, ['variants=()'])
  with pytest.raises(UserError, match='the sweep config lists no variants'):
    sweep.validate(config)
  config_lib.apply_overrides(config, ["variants=('token','spam')"])
  with pytest.raises(UserError, match=r"variants \['spam'\] are neither masking kinds .* nor "
                                      'named in variant_overrides'):
    sweep.validate(config)
  config_lib.apply_overrides(config, ["variants=('token','token_rate40')",
                                      "variant_overrides.token_rate40=('data.masking.rat=0.4',)"])
  with pytest.raises(UserError, match=r"^sweep variant 'token_rate40': .*data.masking.rat"):
    sweep.validate(config)
  config_lib.apply_overrides(config, [
      "variant_overrides.token_rate40=('data.masking.rate=0.4','data.masking.max_predictions=10')"])
  with pytest.raises(UserError, match=r"^sweep variant 'token_rate40': pretrain.data.masking."
                                      r'max_predictions=10 cannot hold .*rate=0.4.*pass '
                                      r'--config.pretrain.data.masking.max_predictions=26'):
    sweep.validate(config)
  config = config_lib.load_config(SWEEP + ':local')
  config_lib.apply_overrides(config, ['downstream_name=word_order'])
  with pytest.raises(UserError, match=r"downstream tasks \['word_order', 'word_order'\] name a "
                                      'task twice'):
    sweep.validate(config)
  config = config_lib.load_config(SWEEP + ':local')
  config_lib.apply_overrides(config, ['more_downstream.word_order.task.seq_len=2'])
  with pytest.raises(UserError, match=r'more_downstream\.word_order\.task\.seq_len=2'):
    sweep.validate(config)
  pretrain_only = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py'))
  with pytest.raises(UserError, match="the sweep config has no 'variants'"):
    sweep.validate(pretrain_only)


def test_variants_are_named_override_sets():
  config = config_lib.load_config(SWEEP + ':local')
  sweep.validate(config)
  assert set(config.variants) >= {'token', 'whole_word', 'span', 'ngram', 'pmi', 'span_sbo',
                                  'token_rate40'}
  base = config.pretrain
  for kind in ('token', 'whole_word', 'span', 'ngram'):  # the old names mean what they did
    c = sweep.variant_config(config, kind)
    assert c.data.masking.kind == kind and c.data.masking.max_predictions == 10
    assert c.to_dict() == config_lib.apply_overrides(
        config_lib.ConfigDict(base.to_dict()).lock(), [f'data.masking.kind={kind}']).to_dict()
  sbo = sweep.variant_config(config, 'span_sbo')
  assert sbo.model.sbo and sbo.data.masking.kind == 'span'
  # max_predictions follows the rate unless the variant sets it.
  rate40 = sweep.variant_config(config, 'token_rate40')
  assert (rate40.data.masking.rate, rate40.data.masking.max_predictions) == (0.4, 26)
  config_lib.apply_overrides(config, [
      "variant_overrides.token_rate40=('data.masking.rate=0.4','data.masking.max_predictions=30')"])
  assert sweep.variant_config(config, 'token_rate40').data.masking.max_predictions == 30
  assert sweep.variant_config(config, 'pmi', '/v.json').data.masking.pmi_vocab == '/v.json'
  # Only plain 15% token masking is already the common evaluation masking.
  assert sweep.has_common_masking(sweep.variant_config(config, 'token'))
  for name in ('token_rate40', 'span_sbo', 'span'):
    assert not sweep.has_common_masking(sweep.variant_config(config, name))
  split = config_lib.apply_overrides(sweep.variant_config(config, 'token'),
                                     ['data.masking.mask_prob=1.0', 'data.masking.random_prob=0'])
  assert not sweep.has_common_masking(split)


def test_shrunken_sweep_reports_logs_and_resumes(tmp_path, capsys,
                                                 restores_the_compile_cache_settings):
  workdir = str(tmp_path)
  argv = ['compare', '--config', SWEEP + ':local', '--workdir', workdir,
          *(f'--config.{o}' for o in SHRINK)]
  assert main(argv) == 0
  out = capsys.readouterr().out
  assert 'token' in out and 'span_sbo' in out and 'pmi' in out
  with open(os.path.join(workdir, 'report.md')) as f:
    markdown = f.read()
  table = [line for line in markdown.splitlines()
           if line.startswith('| ') and not set(line) <= set('|:- ')]
  assert len(table) == 1 + 3  # header + one row a variant
  assert f'{SWEEP}:local' in markdown
  with open(os.path.join(workdir, 'report.csv')) as f:
    by_task = [(r['downstream_task'], r) for r in csv.DictReader(f)]
  assert [t for t, _ in by_task] == ['qa'] * 3 + ['word_order'] * 3  # one row a variant and task
  rows = {r['variant']: r for t, r in by_task if t == 'qa'}
  word_order = {r['variant']: r for t, r in by_task if t == 'word_order'}
  assert set(rows) == set(word_order) == {'token', 'span_sbo', 'pmi'}
  header = table[0]
  assert 'qa: f1' in header and 'word_order: accuracy' in header
  assert os.path.isfile(os.path.join(workdir, 'pmi_vocab.json'))
  assert 'Statistics' in markdown
  for name in ('loss_curves.png', 'mlm_accuracy.png', 'downstream.png'):
    with open(os.path.join(workdir, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The report's numbers are the ones the runs logged.
  with open(os.path.join(workdir, 'span_sbo', 'pretrain', 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  compare_line = [r for r in logged if 'compare_mlm_accuracy_token_masking' in r][-1]
  assert any('sbo_loss' in r for r in logged)
  assert float(rows['span_sbo']['mlm_accuracy_token']) == pytest.approx(
      compare_line['compare_mlm_accuracy_token_masking'])
  assert float(rows['span_sbo']['mlm_accuracy_own']) == pytest.approx(
      [r for r in logged if 'eval_mlm_accuracy' in r][-1]['eval_mlm_accuracy'])
  for task, by_name, run in (('qa', rows, 'downstream_0'),
                             ('word_order', word_order, 'downstream_word_order_0')):
    with open(os.path.join(workdir, 'span_sbo', run, 'best.json')) as f:
      saved = json.load(f)
    assert by_name['span_sbo']['downstream_metric'] == saved['metric']
    assert float(by_name['span_sbo']['downstream_mean']) == pytest.approx(
        saved['metrics'][saved['metric']])
  expected_hash = config_lib.config_hash(sweep.variant_config(
      config_lib.apply_overrides(config_lib.load_config(SWEEP + ':local'), SHRINK), 'span_sbo'))
  assert rows['span_sbo']['config_hash'] == expected_hash
  # Finished variants are read back, not trained again.
  sizes = {v: os.path.getsize(os.path.join(workdir, v, 'pretrain', 'metrics.jsonl'))
           for v in rows}
  assert main(argv) == 0
  assert 'done before, read back' in capsys.readouterr().out
  assert sizes == {v: os.path.getsize(os.path.join(workdir, v, 'pretrain', 'metrics.jsonl'))
                   for v in rows}
  # A result.json of a one-task sweep (before more_downstream) resumes: its values are
  # the first task's, and only the task added since is fine-tuned.
  path = os.path.join(workdir, 'pmi', 'result.json')
  with open(path) as f:
    saved = json.load(f)
  old = dict(saved, downstream_metric_name='f1', downstream=saved['downstream']['qa'])
  del old['downstream_metrics']
  with open(path, 'w') as f:
    json.dump(old, f)
  os.rename(os.path.join(workdir, 'pmi', 'downstream_word_order_0'),
            os.path.join(workdir, 'pmi', 'word_order_before'))
  assert main(argv) == 0
  out = capsys.readouterr().out
  assert 'pmi: done before; fine-tuning the tasks added since: word_order' in out
  assert 'token: done before; fine-tuning' not in out
  with open(path) as f:
    resumed = json.load(f)
  assert resumed['downstream']['qa'] == saved['downstream']['qa']
  assert list(resumed['downstream']) == ['qa', 'word_order']
  assert resumed['downstream_metrics'] == saved['downstream_metrics']
  assert os.path.isfile(os.path.join(workdir, 'pmi', 'downstream_word_order_0', 'best.json'))


def test_gpu_sweep_dry_runs_on_the_cpu(tmp_path):
  """:gpu at two steps: its variants validate, its BERT-mini (bf16) pre-trains with
  the SBO head and fine-tunes on both downstream tasks (SST-2 and SQuAD); only the
  corpus (real text on the GPU machine), the vocabulary a corpus this small can
  train, the input worker count (8 processes) and the tasks' data (the embedded
  tasks of the same kinds) are swapped."""
  config = config_lib.apply_overrides(config_lib.load_config(SWEEP + ':gpu'), [
      'pretrain.data.corpus=embedded', 'pretrain.data.embedded_documents=400',
      'pretrain.data.tokenizer.vocab_size=512', 'pretrain.data.tokenizer.model_type=bpe',
      'pretrain.data.workers=0', 'pretrain.train.steps=2', 'pretrain.train.batch_size=8',
      'pretrain.train.eval_batches=1', 'pretrain.train.log_every=1',
      'pretrain.train.checkpoint_every=2', 'pretrain.optim.warmup_steps=1'])
  sweep.validate(config)
  assert config.pretrain.model.preset == 'mini' and len(config.downstream_seeds) >= 3
  assert config.downstream.task.kind == 'classify'
  pre = sweep.variant_config(config, 'span_sbo')
  results = train.train_and_evaluate(pre, str(tmp_path / 'span_sbo'))
  assert results['sbo_loss'] > 0 and results['mlm_predictions'] > 0
  tasks = sweep.downstream_tasks(config)
  assert [(name, task.task.kind) for name, task in tasks] == [('sst2', 'classify'),
                                                              ('squad', 'qa')]
  for name, task in tasks:
    ft = config_lib.apply_overrides(sweep.downstream_config(task, str(tmp_path / 'span_sbo'), 0),
                                    ['task.train=embedded', 'task.eval=embedded',
                                     'train.steps=2', 'train.log_every=1'])
    assert ft.model.dtype == 'bfloat16' and ft.train.batch_size == 64
    metrics = finetune.finetune_and_evaluate(ft, str(tmp_path / name))
    assert ft.task.metric in metrics
