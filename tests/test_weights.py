"""Opening weights refuses holes: every missing, unexpected or mis-shaped encoder
weight is named, and only heads a checkpoint never had are initialised."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import bertjax
from bertjax import hf, weights
from bertjax.cli import main
from bertjax.errors import UserError
from bertjax.models import heads

WORDS = ['the', 'a', 'city', 'river', 'paris', 'france', 'is', 'in', 'of', '.', ',']
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def hf_dir(path, model_class='BertModel'):
  """A tiny random `transformers` BERT saved with its vocabulary."""
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + WORDS
  cfg = transformers.BertConfig(vocab_size=len(vocab), **SIZES)
  torch.manual_seed(0)
  getattr(transformers, model_class)(cfg).save_pretrained(path)
  (path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  return path


def edit_tensors(path, fn):
  tensors = load_file(str(path / 'model.safetensors'))
  save_file(fn(tensors), str(path / 'model.safetensors'), metadata={'format': 'pt'})


def edit_config(path, **changes):
  raw = json.loads((path / 'config.json').read_text())
  raw.update(changes)
  (path / 'config.json').write_text(json.dumps(raw))


def import_error(src, tmp_path, capsys):
  capsys.readouterr()  # transformers' own progress output from saving the source
  assert main(['import', '--from', str(src), '--workdir', str(tmp_path / 'w')]) == 2
  assert not (tmp_path / 'w').exists()  # refused before anything was written
  return capsys.readouterr().err.strip()


def test_bare_encoder_imports_with_heads_listed(tmp_path, capsys):
  src = hf_dir(tmp_path / 'hf')
  assert main(['import', '--from', str(src), '--workdir', str(tmp_path / 'w')]) == 0
  out = capsys.readouterr().out
  assert 'cls.predictions (5 weights), cls.seq_relationship (2 weights)' in out
  model, _ = bertjax.from_pretrained(str(tmp_path / 'w'))
  reference = load_file(str(src / 'model.safetensors'))
  np.testing.assert_array_equal(
      model.params['bert']['layers'][1]['output']['bias'],
      reference['encoder.layer.1.output.dense.bias'])


def test_missing_query_projection_is_refused(tmp_path, capsys):
  src = hf_dir(tmp_path / 'hf')
  edit_tensors(src, lambda t: {k: v for k, v in t.items()
                               if k != 'encoder.layer.1.attention.self.query.weight'})
  err = import_error(src, tmp_path, capsys)
  assert err.count('\n') == 0
  assert 'lacks 1 weight(s) the model needs (bert.encoder.layer.1.attention.self.query.weight)' in err
  with pytest.raises(UserError, match='query.weight'):
    bertjax.from_pretrained(str(src))


def test_config_claiming_more_layers_than_weights_is_refused(tmp_path, capsys):
  src = hf_dir(tmp_path / 'hf')
  edit_config(src, num_hidden_layers=4)
  assert 'lacks 32 weight(s)' in import_error(src, tmp_path, capsys)


def test_config_claiming_fewer_layers_is_refused(tmp_path, capsys):
  src = hf_dir(tmp_path / 'hf')
  edit_config(src, num_hidden_layers=1)
  assert "has 16 weight(s) a 1-layer BERT does not (bert.encoder.layer.1." in import_error(
      src, tmp_path, capsys)


def test_hidden_size_unlike_the_weights_is_refused(tmp_path, capsys):
  src = hf_dir(tmp_path / 'hf')
  edit_config(src, hidden_size=64)
  err = import_error(src, tmp_path, capsys)
  assert 'mis-shaped weight(s)' in err and 'expected' in err


@pytest.mark.parametrize('text, message', [
    ('{"model_type": "bert", "vocab_si', 'is not valid JSON'),
    ('[1, 2]', 'holds a list, not a BERT config'),
])
def test_malformed_config_json(tmp_path, capsys, text, message):
  src = hf_dir(tmp_path / 'hf')
  (src / 'config.json').write_text(text)
  assert message in import_error(src, tmp_path, capsys)


@pytest.mark.parametrize('changes, message', [
    (dict(hidden_size='32'), "hidden_size is '32', not a positive whole number"),
    (dict(num_hidden_layers=0), 'num_hidden_layers is 0'),
    (dict(num_attention_heads=3), 'not a multiple of num_attention_heads 3'),
    (dict(hidden_dropout_prob='x'), "hidden_dropout_prob is 'x'"),
    (dict(hidden_dropout_prob=1.0), 'hidden_dropout_prob is 1.0, not a rate in [0, 1)'),
    (dict(layer_norm_eps=0), 'layer_norm_eps is 0, not a positive number'),
])
def test_bad_config_values(tmp_path, capsys, changes, message):
  src = hf_dir(tmp_path / 'hf')
  edit_config(src, **changes)
  assert message in import_error(src, tmp_path, capsys)


def test_pretraining_checkpoint_without_nsp_gets_a_fresh_nsp_head(tmp_path):
  src = hf_dir(tmp_path / 'hf', 'BertForPreTraining')
  edit_tensors(src, lambda t: {k: v for k, v in t.items()
                               if not k.startswith('cls.seq_relationship')})
  source = weights.open_weights(str(src))
  fresh = weights.initial_params('pretraining', source.model_cfg)
  params, initialised = weights.transplant(source, fresh, 'pretraining')
  assert initialised == ['cls.seq_relationship.bias', 'cls.seq_relationship.weight']
  np.testing.assert_array_equal(params['nsp']['kernel'], fresh['nsp']['kernel'])
  # Part of a head is a hole, not a head it never had.
  edit_tensors(src, lambda t: {k: v for k, v in t.items() if k != 'cls.predictions.bias'})
  with pytest.raises(UserError, match=r'lacks 1 weight\(s\) the model needs \(cls.predictions.bias\)'):
    weights.transplant(weights.open_weights(str(src)), fresh, 'pretraining')


def test_classifier_of_another_label_count_is_refused(tmp_path):
  src = hf_dir(tmp_path / 'hf', 'BertForSequenceClassification')
  source = weights.open_weights(str(src))
  assert source.kind == 'sequence_classification' and source.num_labels == 2
  fresh = weights.initial_params('sequence_classification', source.model_cfg, num_labels=3)
  with pytest.raises(UserError, match='2-label sequence_classification head but the task has 3'):
    weights.transplant(source, fresh, 'sequence_classification', num_labels=3)
  # Its encoder still serves another head kind; the classifier is not used.
  params, initialised = weights.transplant(
      source, weights.initial_params('question_answering', source.model_cfg),
      'question_answering')
  assert initialised == ['qa_outputs.bias', 'qa_outputs.weight']
  assert hf.read_hf_config(str(src))[0].num_layers == 2


@pytest.mark.parametrize('kind', sorted(heads.KINDS))
def test_the_head_kind_table_names_every_weight_of_its_module(kind):
  """heads.KINDS is what every module reads about a kind: its names map the module's
  params one to one, its class is a `transformers` class, its groups cover its head,
  and its label weight has one row per label (a kind without one takes no label count)."""
  import math
  from bertjax import hf_weights
  from bertjax.models.bert import BertConfig
  head = heads.KINDS[kind]
  cfg = BertConfig(vocab_size=20, num_layers=2, hidden_size=8, num_heads=2, intermediate_size=16)
  params = weights.abstract_params(kind, cfg)
  rooted = {'bert': params} if kind == 'encoder' else params
  ours = {hf_weights.path_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(rooted)}
  names = hf_weights.name_map(kind, 2)
  assert sorted(p for _, p, _ in names) == sorted(ours)
  assert hasattr(transformers, head.hf_class)
  three = weights.abstract_params(kind, cfg, num_labels=3)
  if head.labelled:
    path, layout = next((p, l) for n, p, l in names if n == head.labels_weight)
    kernel = three
    for key in path:
      kernel = kernel[key]
    assert math.prod(kernel.shape[layout[1]:]) == 3  # transformers' rows: the labels
  else:
    assert jax.tree.map(lambda a: a.shape, three) == jax.tree.map(lambda a: a.shape, params)
  outside_encoder = [n for n, _, _ in names if not n.startswith(('bert.', 'embeddings.',
                                                                 'encoder.', 'pooler.'))]
  assert all(n.startswith(head.hf_prefixes) for n in outside_encoder)
  assert head.labels_weight is None or head.labels_weight in {n for n, _, _ in names}


def test_every_task_builds_a_kind_of_the_table():
  from bertjax.tasks import registry
  for task in registry.TASKS:
    assert registry.task_module(task).MODEL_KIND in heads.KINDS, task
