"""What a run adopts from `init`: its tokenizer is the init's own, and a stale one that
a failed earlier run left behind is replaced (before training) or refused (after)."""
import os

import pytest

from bertjax import init_weights
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.errors import UserError


def hf_dir(path, words):
  path.mkdir(parents=True)
  (path / 'config.json').write_text('{"model_type": "bert"}')
  (path / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]',
                                             *words]) + '\n')
  return str(path)


def vocab(workdir):
  return tokenizer_lib.load(os.path.join(workdir, 'tokenizer')).pieces[5:]


def test_a_retry_with_another_init_gets_that_init_s_tokenizer(tmp_path):
  first, second = hf_dir(tmp_path / 'a', ['apple']), hf_dir(tmp_path / 'b', ['berry'])
  workdir = str(tmp_path / 'run')
  init_weights.adopt_tokenizer(first, workdir)
  assert vocab(workdir) == ['apple']
  init_weights.adopt_tokenizer(first, workdir)  # the same init: kept
  init_weights.adopt_tokenizer(second, workdir)  # the first run failed before training
  assert vocab(workdir) == ['berry']
  (tmp_path / 'run' / 'metrics.jsonl').write_text('{"step": 1}\n')
  with pytest.raises(UserError, match=r'came from .*/b, but init=.*/a, and training has started'):
    init_weights.adopt_tokenizer(first, workdir)
  assert vocab(workdir) == ['berry']


def test_a_tokenizer_trained_by_a_failed_run_gives_way_to_init(tmp_path):
  from bertjax.data import derived_tokenizer
  workdir = tmp_path / 'run'
  hf_dir(workdir / 'tokenizer', ['trained'])
  (workdir / 'tokenizer' / 'config.json').unlink()
  (workdir / 'tokenizer' / derived_tokenizer.RECORD).write_text('{"data.corpus": "embedded"}')
  init_weights.adopt_tokenizer(hf_dir(tmp_path / 'a', ['apple']), str(workdir))
  assert vocab(str(workdir)) == ['apple']
  assert not (workdir / 'tokenizer' / derived_tokenizer.RECORD).exists()


def test_init_that_is_neither_workdir_nor_model_dir(tmp_path):
  with pytest.raises(UserError, match='neither a bertjax workdir nor a Hugging Face'):
    init_weights.check_source(str(tmp_path))
