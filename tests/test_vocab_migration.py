"""Workdirs written before the vocabulary was padded to a multiple of 128 resume,
export and load: their tables gain the padding rows on restore."""
import os

import numpy as np
import pytest

import bertjax
from bertjax import config_lib, hf_convert, train
from bertjax.errors import UserError
from bertjax.models import bert

from conftest import ROOT


def quickstart(**overrides):
  c = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()])


@pytest.fixture(scope='module')
def unpadded_workdir(tmp_path_factory):
  """A workdir trained by a model without padding (vocabulary 300, not a multiple of
  128), as bertjax wrote them before."""
  workdir = str(tmp_path_factory.mktemp('unpadded'))
  old = bert.BertConfig.vocab_multiple
  bert.BertConfig.vocab_multiple = 1
  try:
    train.train_and_evaluate(quickstart(**{'train.steps': 2, 'train.checkpoint_every': 2,
                                          'data.tokenizer.vocab_size': 300}), workdir)
  finally:
    bert.BertConfig.vocab_multiple = old
  return workdir


def test_an_unpadded_checkpoint_resumes_padded(unpadded_workdir, tmp_path):
  import shutil
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(unpadded_workdir, workdir)
  results = train.train_and_evaluate(
      quickstart(**{'train.steps': 4, 'train.checkpoint_every': 2,
                    'data.tokenizer.vocab_size': 300}), workdir)
  assert np.isfinite(results['mlm_loss'])
  model, _ = bertjax.from_pretrained(workdir)
  assert model.params['bert']['embeddings']['word_embeddings']['embedding'].shape[0] == 384


def test_an_unpadded_checkpoint_exports_and_loads(unpadded_workdir, tmp_path):
  model, tok = bertjax.from_pretrained(unpadded_workdir)
  out = hf_convert.export_hf(unpadded_workdir, str(tmp_path / 'export'))
  again, _ = bertjax.from_pretrained(out)
  batch = tok(['a short text'])
  np.testing.assert_allclose(model(**batch).prediction_logits,
                             again(**batch).prediction_logits, atol=1e-5)
  assert model(**batch).prediction_logits.shape[-1] == 300


def test_a_checkpoint_of_another_layout_is_refused_not_set_aside(unpadded_workdir, tmp_path):
  import shutil
  workdir = str(tmp_path / 'other')
  shutil.copytree(unpadded_workdir, workdir)
  os.remove(os.path.join(workdir, 'metrics.jsonl'))  # so the config check lets it through
  with pytest.raises(UserError, match='holds a model of another shape or layout'):
    train.train_and_evaluate(quickstart(**{'train.steps': 4, 'data.tokenizer.vocab_size': 300,
                                           'model.intermediate_size': 64}), workdir)
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['2']
