"""Corpora: text-file document modes, the held-out rule, tfds builders read back
without TensorFlow, `tfds:` corpora, pre-tokenized array_record directories and
`bertjax data`."""
import argparse
import json
import os
import subprocess
import sys

import grain
import pytest
import tensorflow_datasets as tfds

from bertjax import data_cli
from bertjax.data import (corpus, embedded, instances, pipeline, prepare, prepared, splits,
                          tfds_builders, text_files, tokenizer as tokenizer_lib)
from bertjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared', 'data')
TEXT = 'One. Two!\nThree?\n\nFour.\n'


@pytest.fixture
def texts(tmp_path):
  d = tmp_path / 'txt'
  d.mkdir()
  (d / 'a.txt').write_text(TEXT, encoding='utf-8')
  (d / 'b.txt').write_text('Five six.\n\n\nSeven. Eight.\nNine ten.\n', encoding='utf-8')
  # '\u200b' is a sentence SentencePiece normalizes to no tokens; prepare drops it.
  (d / 'c.txt').write_text('Eleven.\n\u200b\n\nTwelve.\n\nThirteen.\n', encoding='utf-8')
  return str(d / '*.txt')


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tok')
  sentences = [s for doc in embedded.embedded_documents(200, seed=0) for s in doc]
  tokenizer_lib.train_sentencepiece(sentences, str(d / 'spm.model'), vocab_size=200)
  return str(d)


def test_text_files_in_each_doc_mode(texts):
  assert text_files.text_file_documents(texts, 'file') == [
      ['One.', 'Two!', 'Three?', 'Four.'], ['Five six.', 'Seven.', 'Eight.', 'Nine ten.'],
      ['Eleven.', '\u200b', 'Twelve.', 'Thirteen.']]
  assert text_files.text_file_documents(texts, 'blank_line')[:4] == [
      ['One.', 'Two!', 'Three?'], ['Four.'], ['Five six.'], ['Seven.', 'Eight.', 'Nine ten.']]
  assert text_files.text_file_documents(texts, 'line')[:4] == [
      ['One.', 'Two!'], ['Three?'], ['Four.'], ['Five six.']]
  assert corpus.load_documents(texts, num_embedded=0, seed=0, doc_mode='line') == \
      text_files.text_file_documents(texts, 'line')
  with pytest.raises(UserError, match='doc_mode'):
    text_files.text_file_documents(texts, 'paragraph')
  with pytest.raises(UserError, match=r'is a directory .*\*\.txt'):
    corpus.load_documents(os.path.dirname(texts), num_embedded=0, seed=0)


def test_held_out_rule_is_seeded_and_never_takes_everything():
  train, held_out = splits.split_indices(100, 0.1, seed=1)
  assert (train, held_out) == splits.split_indices(100, 0.1, seed=1)
  assert held_out != splits.split_indices(100, 0.1, seed=2)[1]
  assert len(held_out) == 10 and sorted(train + held_out) == list(range(100))
  assert len(splits.split_indices(5, 0.01, seed=0)[1]) == 1
  with pytest.raises(UserError, match='at least two'):
    splits.split_indices(1, 0.5, seed=0)
  with pytest.raises(UserError, match=r'must be in \[0, 1\)'):
    splits.split_indices(10, 1.0, seed=0)


def _held_out(n, eval_fraction, seed):
  return set(splits.split_indices(n, eval_fraction, seed)[1])


def test_text_builder_writes_array_record_read_by_data_source(texts, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  builder = tfds_builders.build_text_dataset(texts, data_dir, name='mine', doc_mode='blank_line',
                                             eval_fraction=0.3, seed=5)
  files = sorted(os.listdir(builder.data_dir))
  assert 'local_text-train.array_record-00000-of-00001' in files and 'features.json' in files
  with open(os.path.join(builder.data_dir, 'dataset_info.json')) as f:
    assert json.load(f)['fileFormat'] == 'array_record'

  sources = tfds.data_source('local_text/mine', data_dir=data_dir)
  read = {split: [ex['text'].decode() for ex in source] for split, source in sources.items()}
  docs = text_files.text_file_documents(texts, 'blank_line')
  held_out = _held_out(len(docs), 0.3, seed=5)
  assert read['eval'] == ['\n'.join(d) for i, d in enumerate(docs) if i in held_out]
  assert read['train'] == ['\n'.join(d) for i, d in enumerate(docs) if i not in held_out]
  assert sources['train'][1] == {'text': read['train'][1].encode()}  # random access
  assert 'tensorflow' not in sys.modules


def test_tfds_corpus_reads_a_prepared_dataset_by_name(texts, tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'tfds')
  tfds_builders.build_text_dataset(texts, data_dir, name='lines', doc_mode='line')
  monkeypatch.setenv('TFDS_DATA_DIR', data_dir)
  assert corpus.load_documents('tfds:local_text/lines', num_embedded=0, seed=0) == \
      text_files.text_file_documents(texts, 'line')
  assert corpus.load_documents('tfds:local_text/lines:train[:2]', num_embedded=0, seed=0) == \
      [['One.', 'Two!'], ['Three?']]
  with pytest.raises(UserError, match=r"no split 'eval'.*\['train'\]"):
    corpus.load_documents('tfds:local_text/lines:eval', num_embedded=0, seed=0)
  with pytest.raises(UserError, match=r'not prepared in .*tfds build wikipedia/20230601.en'):
    corpus.load_documents('tfds:wikipedia/20230601.en', num_embedded=0, seed=0)
  with pytest.raises(UserError, match='cannot be opened'):
    corpus.load_documents('tfds:local_text/absent', num_embedded=0, seed=0)


class Articles(tfds.core.GeneratorBasedBuilder):
  """A stand-in for a catalog dataset such as wikipedia: title and text features."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {'headline': tfds.features.Text(), 'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    yield 'a', {'headline': 'Lobsters', 'text': 'Lobsters are blue. They turn red.\nBig claws.'}


def test_tfds_catalog_dataset_is_read_from_files_without_its_code(tmp_path):
  Articles(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  script = ('import json, sys; from bertjax.data import corpus; '
            'print(json.dumps(corpus.load_documents("tfds:articles", num_embedded=0, seed=0))); '
            'assert "tensorflow" not in sys.modules and "test_corpus" not in sys.modules')
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path), PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                        text=True, check=True)
  assert json.loads(done.stdout.splitlines()[-1]) == [
      ['Lobsters are blue.', 'They turn red.', 'Big claws.']]  # 'text', not 'headline'


def test_tfds_corpus_refuses_a_dataset_stored_as_tfrecord(texts, tmp_path, monkeypatch):
  builder = tfds_builders.build_text_dataset(texts, str(tmp_path), name='old')
  info_path = os.path.join(builder.data_dir, 'dataset_info.json')
  with open(info_path) as f:
    info = json.load(f)
  with open(info_path, 'w') as f:
    json.dump(dict(info, fileFormat='tfrecord'), f)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  with pytest.raises(UserError, match='file_format=array_record'):
    corpus.load_documents('tfds:local_text/old', num_embedded=0, seed=0)


def test_tsv_builder_round_trip_and_column_errors(tmp_path, monkeypatch):
  (tmp_path / 'train.tsv').write_text(
      'premise\thypothesis\tlabel\nit rains\tthe street is wet\tyes\n'
      'it is dry\tthe street is wet\tno\n', encoding='utf-8')
  (tmp_path / 'dev.tsv').write_text('premise\thypothesis\tlabel\na\tb\tyes\n', encoding='utf-8')
  data_dir = str(tmp_path / 'tfds')
  builder = tfds_builders.build_tsv_dataset(
      {'train': str(tmp_path / 'train.tsv'), 'dev': str(tmp_path / 'dev.tsv')}, data_dir,
      name='nli', text_a='premise', text_b='hypothesis', label='label')
  assert builder.info.features['label'].names == ['no', 'yes']
  train = list(tfds.data_source('local_tsv/nli', split='train', data_dir=data_dir))
  assert [(e['text_a'], e['text_b'], e['label']) for e in train] == [
      (b'it rains', b'the street is wet', 1), (b'it is dry', b'the street is wet', 0)]
  monkeypatch.setenv('TFDS_DATA_DIR', data_dir)  # no 'text' feature: the first Text one by name
  assert corpus.load_documents('tfds:local_tsv/nli:dev', num_embedded=0, seed=0) == [['a']]

  (tmp_path / 'short.tsv').write_text('good film\tpos\nno label here\n', encoding='utf-8')
  with pytest.raises(UserError, match=r'short\.tsv, row 2: has 1 column\(s\), no label'):
    tfds_builders.build_tsv_dataset({'train': str(tmp_path / 'short.tsv')}, data_dir,
                                    name='short', text_a=0, label=1, header=False)
  with pytest.raises(UserError, match=r"train\.tsv, row 1 \(header\): no column label='y'"):
    tfds_builders.build_tsv_dataset({'train': str(tmp_path / 'train.tsv')}, data_dir,
                                    name='bad', text_a='premise', label='y')


def _tokenize(tok, documents):
  docs = [[ids for ids in (tok.encode(s) for s in d) if ids] for d in documents]
  return [d for d in docs if d]


def test_prepare_round_trip_equals_tokenizing_directly(texts, tok_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(prepare, 'DOCS_PER_SHARD', 2)  # several shards from a small corpus
  out = str(tmp_path / 'prepared')
  manifest = prepare.prepare(texts, out, tok_dir, doc_mode='blank_line', seed=3,
                             eval_fraction=0.2)
  tok = tokenizer_lib.load(tok_dir)
  docs = text_files.text_file_documents(texts)
  held_out = _held_out(len(docs), 0.2, seed=3)
  expected = {'train': _tokenize(tok, [d for i, d in enumerate(docs) if i not in held_out]),
              'eval': _tokenize(tok, [d for i, d in enumerate(docs) if i in held_out])}
  for split, want in expected.items():
    got = prepared.load_prepared(out, split, tok)
    assert [[s.tolist() for s in d] for d in got] == want
    assert all(s.dtype == 'int32' for d in got for s in d)
    assert manifest['splits'][split]['tokens'] == sum(len(s) for d in want for s in d)
  assert manifest['splits']['train']['shards'] == [
      'train.array_record-00000-of-00003', 'train.array_record-00001-of-00003',
      'train.array_record-00002-of-00003']
  assert manifest['tokenizer']['vocab_size'] == tok.vocab_size
  second_shard = os.path.join(out, manifest['splits']['train']['shards'][1])
  shard = grain.sources.ArrayRecordDataSource([second_shard])  # random access by grain
  assert [s.tolist() for s in prepared.decode_record(shard[0])] == expected['train'][2]
  # The corpus string accepts the directory: documents decoded back to text.
  assert corpus.load_documents(out, num_embedded=0, seed=0)[0] == [
      tok.decode(s) for s in expected['train'][0]]


def test_prepared_directory_refuses_another_tokenizer_and_foreign_out(texts, tok_dir, tmp_path):
  out = str(tmp_path / 'prepared')
  prepare.prepare(texts, out, tok_dir)
  other = tokenizer_lib.train_sentencepiece(
      [s for d in embedded.embedded_documents(50, seed=1) for s in d],
      str(tmp_path / 'other' / 'spm.model'), vocab_size=120)
  with pytest.raises(UserError, match='prepared with another tokenizer'):
    prepared.load_prepared(out, 'train', other)
  with pytest.raises(UserError, match=r"no split 'eval'"):
    prepared.load_prepared(out, 'eval')
  (tmp_path / 'notes').mkdir()
  (tmp_path / 'notes' / 'keep.txt').write_text('mine')
  with pytest.raises(UserError, match='not a prepared corpus'):
    prepare.prepare(texts, str(tmp_path / 'notes'), tok_dir)
  assert (tmp_path / 'notes' / 'keep.txt').read_text() == 'mine'
  prepare.prepare(texts, out, tok_dir, doc_mode='line')  # replaces its own output
  assert prepared.read_manifest(out)['doc_mode'] == 'line'


def _run(argv):
  parser = argparse.ArgumentParser(prog='bertjax')
  data_cli.add_data_commands(parser.add_subparsers(dest='command', required=True))
  args = parser.parse_args(argv)
  args.run(args, [])


def test_data_commands_train_prepare_and_inspect(texts, tmp_path, capsys):
  tok_out = str(tmp_path / 'tok')
  _run(['data', 'tokenizer', '--corpus', 'embedded', '--embedded_documents', '100',
        '--out', tok_out, '--vocab_size', '150', '--model', 'bpe'])
  tok = tokenizer_lib.load(tok_out)
  assert tok.vocab_size <= 150 and tok.sp.id_to_piece(4) == '[MASK]'
  assert 'bpe' in capsys.readouterr().out

  out = str(tmp_path / 'prepared')
  _run(['data', 'prepare', '--corpus', texts, '--tokenizer', tok_out, '--out', out,
        '--doc_mode', 'file'])
  assert 'train: 3 documents, 11 sentences' in capsys.readouterr().out

  _run(['data', 'inspect', '--corpus', texts, '--tokenizer', tok_out, '--n', '1'])
  printed = capsys.readouterr().out
  assert 'corpus ' + texts + ': 7 documents, 12 sentences' in printed
  assert 'document 0: 3 sentences' in printed and 'document 1' not in printed
  (tmp_path / 'pets.txt').write_text('the dog barks at the postman .\n', encoding='utf-8')
  _run(['data', 'inspect', '--corpus', str(tmp_path / 'pets.txt'), '--tokenizer', tok_out])
  shown = capsys.readouterr().out.splitlines()[-1].split()
  assert shown[0].startswith('[▁the') and len(shown) == 7
  words = [w.strip('[]').replace('·', '').replace('▁', '') for w in shown]
  assert words == 'the dog barks at the postman .'.split()  # one [word] a word start
  _run(['data', 'inspect', '--corpus', out])
  assert ': 3 documents, 11 sentences' in capsys.readouterr().out

  (tmp_path / 'latin1.txt').write_bytes(b'caf\xe9\n')
  with pytest.raises(UserError, match='not UTF-8'):
    _run(['data', 'inspect', '--corpus', str(tmp_path / 'latin1.txt')])
  with pytest.raises(UserError, match='matches no file'):
    _run(['data', 'prepare', '--corpus', str(tmp_path / 'none*.txt'), '--tokenizer', tok_out,
          '--out', str(tmp_path / 'p2')])
  with pytest.raises(UserError, match='Vocabulary size is smaller'):
    _run(['data', 'tokenizer', '--corpus', texts, '--out', str(tmp_path / 't2'),
          '--vocab_size', '6'])


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'wikitext2')),
                    reason='../shared/data/wikitext2 is absent')
def test_wikitext2_through_tfds_and_prepare(tok_dir, tmp_path):
  path = os.path.join(SHARED, 'wikitext2', 'valid.txt')
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  builder = tfds_builders.build_text_dataset(path, str(tmp_path / 'tfds'), name='wikitext2',
                                             doc_mode='line', eval_fraction=0.01)
  assert sum(s.num_examples for s in builder.info.splits.values()) == len(lines)
  source = builder.as_data_source('train')
  assert source[0]['text'].decode() == '\n'.join(text_files.split_sentences(lines[0]))
  assert lines[0].startswith('= Homarus gammarus =')
  manifest = prepare.prepare(path, str(tmp_path / 'prepared'), tok_dir, doc_mode='line')
  docs = prepared.load_prepared(str(tmp_path / 'prepared'))
  assert manifest['splits']['train']['documents'] == len(docs) == len(lines)
  assert sum(len(s) for d in docs for s in d) == manifest['splits']['train']['tokens'] > 100_000


def _data_config(**overrides):
  from bertjax import config_lib
  c = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()]).data


def test_prepared_splits_are_read_as_stored_and_fix_the_tokenizer(texts, tok_dir, tmp_path,
                                                                    capsys):
  out = str(tmp_path / 'prepared')
  prepare.prepare(texts, out, tok_dir, seed=5, eval_fraction=0.3,
                  instance_settings=instances.InstanceSettings(
                      seq_len=64, short_seq_prob=0.1, sentence_objective='nsp', packing=False))
  work = str(tmp_path / 'work')
  # A run on the text that failed before training left a tokenizer trained on it.
  pipeline.load_or_train_tokenizer(_data_config(**{'data.tokenizer.vocab_size': 150}),
                                   embedded.embedded_documents(60), work, seed=0)
  capsys.readouterr()
  # The split stored is used whatever the run's seed and eval_fraction say.
  tok, train_docs, eval_docs = pipeline._token_documents(
      _data_config(**{'data.corpus': out, 'data.eval_fraction': 0.05}), 11, work)
  assert 'replacing' in capsys.readouterr().out
  assert prepared.fingerprint(tok) == prepared.read_manifest(out)['tokenizer']['fingerprint']
  assert eval_docs == [[s.tolist() for s in d] for d in prepared.load_prepared(out, 'eval')]
  assert len(train_docs) + len(eval_docs) == 7

  # A workdir tokenizer with no record is trusted, but stored ids must be its own.
  other = str(tmp_path / 'other')
  tokenizer_lib.train_sentencepiece(
      [s for d in embedded.embedded_documents(50, seed=1) for s in d],
      os.path.join(other, 'tokenizer', 'spm.model'), vocab_size=120)
  with pytest.raises(UserError, match='prepared with another tokenizer'):
    pipeline._instances(_data_config(**{'data.corpus': out}), 0, other)


def test_data_tfds_command_builds_text_and_tsv_datasets(texts, tmp_path, capsys):
  data_dir = str(tmp_path / 'tfds')
  _run(['data', 'tfds', '--corpus', texts, '--name', 'cli', '--data_dir', data_dir,
        '--eval_fraction', '0.3', '--seed', '5'])
  printed = capsys.readouterr().out
  assert 'eval: 2 examples' in printed and 'train: 5 examples' in printed
  assert f'TFDS_DATA_DIR={data_dir} and tfds:local_text/cli' in printed
  docs = text_files.text_file_documents(texts)
  held_out = _held_out(len(docs), 0.3, seed=5)
  source = tfds.data_source('local_text/cli', split='eval', data_dir=data_dir)
  assert [ex['text'].decode() for ex in source] == [
      '\n'.join(d) for i, d in enumerate(docs) if i in held_out]

  (tmp_path / 'train.tsv').write_text('good film\tpos\nbad film\tneg\n', encoding='utf-8')
  _run(['data', 'tfds', '--tsv', f'train={tmp_path / "train.tsv"}', '--name', 'sst',
        '--data_dir', data_dir, '--text_a', '0', '--label', '1', '--no_header'])
  assert 'train: 2 examples' in capsys.readouterr().out
  assert [e['label'] for e in tfds.data_source('local_tsv/sst', split='train',
                                               data_dir=data_dir)] == [1, 0]
  with pytest.raises(UserError, match='needs --text_a and --label'):
    _run(['data', 'tfds', '--tsv', f'train={tmp_path / "train.tsv"}', '--name', 'x',
          '--data_dir', data_dir])
  with pytest.raises(UserError, match='is not SPLIT=PATH'):
    _run(['data', 'tfds', '--tsv', str(tmp_path / 'train.tsv'), '--name', 'x',
          '--data_dir', data_dir, '--text_a', '0', '--label', '1', '--no_header'])
  with pytest.raises(UserError, match="0-based index, not 'text'"):
    _run(['data', 'tfds', '--tsv', f'train={tmp_path / "train.tsv"}', '--name', 'x',
          '--data_dir', data_dir, '--text_a', 'text', '--label', '1', '--no_header'])
