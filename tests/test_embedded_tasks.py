"""The generated classification tasks and how `task.embedded` picks one."""
from __future__ import annotations

import csv

import pytest

from bertjax import config_lib
from bertjax.data import embedded_tasks
from bertjax.errors import UserError


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f, delimiter='\t'))


def test_word_order_swaps_two_neighbours_in_about_half_the_sentences(tmp_path):
  train, dev = embedded_tasks.write_word_order(str(tmp_path), train_rows=300, eval_rows=50,
                                               seed=1)
  rows = _rows(train)
  assert len(rows) == 300 and len(_rows(dev)) == 50
  swapped = [r['sentence'].split() for r in rows if r['label'] == 'swapped']
  assert {r['label'] for r in rows} == {'real', 'swapped'}
  assert 0.4 < len(swapped) / len(rows) < 0.6
  for words in swapped:
    assert words[-1] == '.'  # the swap leaves the full stop where it is
  # A swap of two equal words would leave a 'swapped' row that reads as written.
  real = {tuple(r['sentence'].split()) for r in rows if r['label'] == 'real'}
  assert not real & {tuple(w) for w in swapped}


def test_the_splits_differ_and_a_seed_repeats_them(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  a = embedded_tasks.write_word_order(str(tmp_path / 'a'), train_rows=40, eval_rows=40, seed=0)
  b = embedded_tasks.write_word_order(str(tmp_path / 'b'), train_rows=40, eval_rows=40, seed=0)
  assert open(a[0]).read() == open(b[0]).read()
  assert open(a[0]).read() != open(a[1]).read()


def _task(embedded='country'):
  c = config_lib.finetune_defaults('classify')
  c.task.train = c.task.eval = 'embedded'
  c.task.embedded = embedded
  return c.task


def test_task_embedded_picks_the_classification_task(tmp_path):
  default = _task()
  embedded_tasks.materialize(default, str(tmp_path / 'country'), seed=0)
  assert {r['label'] for r in _rows(default.train)} == set(
      embedded_tasks.embedded.CITY_COUNTRY.values())
  order = _task('word_order')
  embedded_tasks.materialize(order, str(tmp_path / 'order'), seed=0)
  assert {r['label'] for r in _rows(order.train)} == {'real', 'swapped'}


def test_an_unknown_embedded_task_is_one_clear_error(tmp_path):
  with pytest.raises(UserError, match='task.embedded=.nope. .*country, word_order'):
    embedded_tasks.materialize(_task('nope'), str(tmp_path), seed=0)
