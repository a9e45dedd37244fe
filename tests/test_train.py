"""End to end: the quickstart's :local variant trains, checkpoints, resumes exactly."""
import json
import os
import shutil

import numpy as np
import pytest

from bertjax import config_lib, train
from bertjax.cli import main
from bertjax.errors import UserError

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')


def local_config(**overrides):
  c = config_lib.load_config(QUICKSTART + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  results = train.train_and_evaluate(local_config(), workdir)
  return workdir, results


def test_run_writes_metrics_checkpoints_tokenizer_and_events(finished_run):
  workdir, results = finished_run
  config = local_config()
  records = read_metrics(workdir)
  train_records = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train_records] == list(
      range(config.train.log_every, config.train.steps + 1, config.train.log_every))
  for key in ('loss', 'mlm_accuracy', 'nsp_accuracy', 'learning_rate', 'tokens_per_sec'):
    assert all(np.isfinite(r[key]) for r in train_records), key
  assert train_records[-1]['loss'] < train_records[0]['loss']
  assert records[-1]['eval_mlm_accuracy'] == pytest.approx(results['mlm_accuracy'])
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']
  assert os.path.exists(os.path.join(workdir, 'tokenizer', 'spm.model'))
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['train']['steps'] == config.train.steps


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(finished_run, tmp_path):
  workdir, results = finished_run
  # Simulate a run that died after its step-10 checkpoint: drop what came later.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))
  os.remove(os.path.join(resumed, 'metrics.jsonl'))
  resumed_results = train.train_and_evaluate(local_config(), resumed)
  after = [r for r in read_metrics(resumed) if 'loss' in r]
  before = {r['step']: r for r in read_metrics(workdir) if 'loss' in r}
  assert [r['step'] for r in after] == [15, 20]  # it restarted at step 10, not 0
  for r in after:
    assert r['loss'] == pytest.approx(before[r['step']]['loss'], rel=1e-6)
  assert resumed_results['mlm_loss'] == pytest.approx(results['mlm_loss'], rel=1e-6)


def test_rerunning_a_finished_workdir_only_evaluates(finished_run):
  workdir, results = finished_run
  n_before = len(read_metrics(workdir))
  again = train.train_and_evaluate(local_config(), workdir)
  assert again['mlm_accuracy'] == pytest.approx(results['mlm_accuracy'])
  assert [r for r in read_metrics(workdir)[n_before:] if 'loss' in r] == []


def test_resuming_with_another_model_is_refused(finished_run):
  workdir, _ = finished_run
  with pytest.raises(UserError, match='was trained with model.num_layers=2, but the config says 3'):
    train.train_and_evaluate(local_config(**{'model.num_layers': 3}), workdir)


def test_nan_loss_before_any_checkpoint_says_nothing_was_kept(tmp_path):
  workdir = str(tmp_path / 'nan')
  config = local_config(**{'optim.learning_rate': 1e30, 'optim.clip_norm': 1e30,
                           'optim.warmup_steps': 0, 'train.checkpoint_every': 5,
                           'train.log_every': 5})
  with pytest.raises(UserError, match=r'the loss became (nan|inf|-inf) by step 5, before any '
                                      r'checkpoint was saved: nothing was kept'):
    train.train_and_evaluate(config, workdir)


def test_periodic_eval_and_profile(tmp_path):
  workdir = str(tmp_path / 'watched')
  train.train_and_evaluate(local_config(**{'train.eval_every': 10}), workdir, profile=True)
  evals = [r['step'] for r in read_metrics(workdir) if 'eval_mlm_accuracy' in r]
  assert evals == [10, 20]
  traces = [f for _, _, files in os.walk(os.path.join(workdir, 'profile')) for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces
  record = read_metrics(workdir)[-2]
  assert record['flops_per_sec_per_device'] > 0 and record['step_time'] > 0


def test_packed_training_on_a_prepared_corpus(tmp_path, capsys):
  text = tmp_path / 'corpus.txt'
  from bertjax.data import corpus
  text.write_text('\n\n'.join(' '.join(d) for d in corpus.embedded_documents(300, seed=4)))
  tok_dir, prepared = str(tmp_path / 'tok'), str(tmp_path / 'prepared')
  assert main(['data', 'tokenizer', '--corpus', str(text), '--out', tok_dir,
               '--vocab_size', '300', '--model', 'bpe']) == 0
  assert main(['data', 'prepare', '--corpus', str(text), '--tokenizer', tok_dir,
               '--out', prepared]) == 0
  workdir = str(tmp_path / 'packed')
  results = train.train_and_evaluate(local_config(**{
      'data.corpus': prepared, 'data.packing': True, 'train.steps': 4}), workdir)
  assert np.isfinite(results['mlm_loss']) and results['nsp_accuracy'] == 0.0
  assert open(os.path.join(workdir, 'tokenizer', 'spm.model'), 'rb').read() == \
      open(os.path.join(tok_dir, 'spm.model'), 'rb').read()


def test_sentence_order_prediction_trains(tmp_path):
  results = train.train_and_evaluate(
      local_config(**{'data.sentence_objective': 'sop', 'train.steps': 4}), str(tmp_path))
  assert 0.0 < results['nsp_accuracy'] <= 1.0


def test_static_masking_cycles_k_masks_dynamic_draws_new_ones(tmp_path):
  from bertjax.data import corpus, instance_store, instances, pipeline
  from bertjax.data import tokenizer as tokenizer_lib
  config = local_config()
  docs = corpus.embedded_documents(50)
  tok = tokenizer_lib.train_sentencepiece((x for d in docs for x in d),
                                          str(tmp_path / 'spm.model'), vocab_size=300)
  table = instances.make_table(instances.tokenize(docs, tok), tok, config.data, 0)
  n, batch = len(table['input_ids']), config.train.batch_size
  indices = np.arange(batch)  # the same instances, read in epochs 0, 1 and 2

  def positions(dupe_factor, epoch):
    rows = pipeline.ProcessRows(instance_store.InMemoryInstances(table), tok, config.data.masking,
                                seed=0, local_batch=batch, global_batch=batch,
                                dupe_factor=dupe_factor)
    return rows.map_with_index(epoch * n // batch + 1, indices)['mlm_positions'].tolist()

  assert positions(0, 0) != positions(0, 1)  # dynamic: a fresh mask every read
  assert positions(2, 0) == positions(2, 2) != positions(2, 1)  # static: 2 masks, cycled


def test_worker_processes_yield_the_same_batches(tmp_path):
  from bertjax.data import pipeline
  c = local_config()
  data = pipeline.build(c.data, batch_size=c.train.batch_size, eval_batches=c.train.eval_batches,
                        seed=c.seed, workdir=str(tmp_path))
  plain, workers = pipeline.train_iterator(data, 0), pipeline.train_iterator(data, 2)
  for _ in range(3):
    a, b = next(plain), next(workers)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_instances_prepared_on_disk_are_read_row_by_row(tmp_path):
  from bertjax.data import instance_store, instances, pipeline, prepared as prepared_lib
  config = local_config(**{'data.embedded_documents': 200})
  tok_dir, prepared = str(tmp_path / 'tok'), str(tmp_path / 'prepared')
  assert main(['data', 'tokenizer', '--corpus', 'embedded', '--embedded_documents', '200',
               '--out', tok_dir, '--vocab_size', '300', '--model', 'bpe']) == 0
  assert main(['data', 'prepare', '--corpus', 'embedded', '--embedded_documents', '200',
               '--tokenizer', tok_dir, '--out', prepared, '--eval_fraction', '0.2',
               '--seq_len', str(config.data.seq_len)]) == 0
  config_lib.apply_overrides(config, [f'data.corpus={prepared}'])
  tok, train_rows, eval_rows, _ = pipeline._instances(config.data, config.seed,
                                                      str(tmp_path / 'work'))
  assert isinstance(train_rows, instance_store.InstanceSource)
  documents = [[s.tolist() for s in d] for d in prepared_lib.load_prepared(prepared, 'train')]
  expected = instances.make_table(documents, tok, config.data, config.seed)
  got = train_rows.rows([0, 5, len(train_rows) - 1])
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value[[0, 5, len(train_rows) - 1]], err_msg=key)
  results = train.train_and_evaluate(config_lib.apply_overrides(config, ['train.steps=2']),
                                     str(tmp_path / 'work'))
  assert np.isfinite(results['mlm_loss'])
