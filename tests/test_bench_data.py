"""`bertjax bench data`: input tokens/s per masking kind on one core, from a prepared
corpus, with the padding share without and with packing."""
from __future__ import annotations

import json
import os

import pytest

from bertjax.bench import data as bench_data
from bertjax.cli import main
from bertjax.data import corpus, masking


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('bench_data')
  text = tmp_path / 'corpus.txt'
  text.write_text('\n\n'.join(' '.join(d) for d in corpus.embedded_documents(300, seed=4)))
  tok_dir, out = str(tmp_path / 'tok'), str(tmp_path / 'prepared')
  assert main(['data', 'tokenizer', '--corpus', str(text), '--out', tok_dir,
               '--vocab_size', '300', '--model', 'bpe']) == 0
  # Instances stored at 64: the unpacked rows are read from array_record.
  assert main(['data', 'prepare', '--corpus', str(text), '--tokenizer', tok_dir, '--out', out,
               '--eval_fraction', '0.1', '--seq_len', '64']) == 0
  return out


def test_one_json_object_a_kind_with_padding_with_and_without_packing(prepared, capsys):
  before = os.sched_getaffinity(0)
  assert main(['bench', 'data', '--corpus', prepared, '--kinds', 'token,span,pmi', '--seq_len',
               '64', '--batch', '8', '--steps', '2', '--json']) == 0
  assert os.sched_getaffinity(0) == before  # pinned to one core while measuring only
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [r['kind'] for r in rows] == ['token', 'span', 'pmi']  # pmi builds its vocabulary
  for row in rows:
    assert row['tokens_per_second'] > row['real_tokens_per_second'] > 0
    assert row['tokens_per_cpu_second'] > 0
    assert row['rows_from'] == 'stored instances (array_record)'
    assert row['packed']['rows_from'] == 'instances built in memory'
    # Packing fills rows that pairs of sentences leave part empty.
    assert row['packed']['padding_share'] < row['padding_share']
  assert [r['target'] for r in rows] == [1_000_000, 500_000, 500_000]


def test_the_kinds_are_those_masking_knows(prepared, monkeypatch, capsys):
  monkeypatch.setattr(masking, 'KINDS', ('whole_word',))
  rows = bench_data.measure(prepared, seq_len=64, batch=8, batches=1)
  assert [r['kind'] for r in rows] == ['whole_word']
  assert 'whole_word' in bench_data.format_table(rows)


def test_bad_input_is_one_clear_line(prepared, tmp_path, capsys):
  assert main(['bench', 'data', '--corpus', str(tmp_path)]) == 2
  assert 'not a prepared corpus' in capsys.readouterr().err
  assert main(['bench', 'data', '--corpus', prepared, '--kinds', 'token,pmj']) == 2
  assert "unknown masking kind(s) ['pmj']" in capsys.readouterr().err
  assert main(['bench', 'data']) == 2
  assert 'bench data --corpus DIR' in capsys.readouterr().err
