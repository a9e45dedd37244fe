import os
import random

import numpy as np
import pytest

from bertjax.data import (derived_tokenizer, embedded, instances, masking, pipeline, splits,
                          text_files, tokenizer as tokenizer_lib)
from bertjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  docs = embedded.embedded_documents(300, seed=0)
  path = tmp_path_factory.mktemp('tok') / 'spm.model'
  return tokenizer_lib.train_sentencepiece((s for d in docs for s in d), str(path),
                                           vocab_size=300, model_type='bpe')


def test_embedded_corpus_is_reproducible_and_structured():
  a, b = embedded.embedded_documents(50, seed=3), embedded.embedded_documents(50, seed=3)
  assert a == b and a != embedded.embedded_documents(50, seed=4)
  for doc in a:
    name = doc[0].split()[0]
    assert doc[0].startswith(f'{name} was born in ')
    assert len(doc) >= 8


def test_sentencepiece_special_ids_and_word_starts(tok):
  assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
  ids = tok.encode('maria was born in paris , a city in france .')
  pieces = [tok.id_to_piece(i) for i in ids]
  starts = tok.word_start_V[ids]
  for piece, start in zip(pieces, starts):
    assert start == (piece.startswith('\u2581') or piece in ',.')
  assert starts.sum() == 11  # one start per whitespace word
  assert tok.decode(ids) == 'maria was born in paris , a city in france .'


def test_text_files_split_documents_on_blank_lines(tmp_path):
  (tmp_path / 'a.txt').write_text('One. Two!\nThree?\n\nFour.\n', encoding='utf-8')
  assert text_files.text_file_documents(str(tmp_path / '*.txt')) == [
      ['One.', 'Two!', 'Three?'], ['Four.']]
  (tmp_path / 'b.txt').write_bytes(b'caf\xe9\n')
  with pytest.raises(UserError, match='not UTF-8'):
    text_files.text_file_documents(str(tmp_path / 'b.txt'))
  with pytest.raises(UserError, match='matches no file'):
    text_files.text_file_documents(str(tmp_path / 'none*.txt'))


def _pairs(tok, objective, seed=1):
  docs = [[tok.encode(s) for s in d] for d in embedded.embedded_documents(300, seed=seed)]
  return docs, list(instances.sentence_pairs(docs, seq_len=64, short_seq_prob=0.1,
                                             objective=objective, rng=random.Random(0)))


def test_nsp_pairs_layout_and_balance(tok):
  _, pairs = _pairs(tok, 'nsp')
  assert all(len(a) + len(b) <= 61 and a and b for a, b, _ in pairs)
  random_share = np.mean([r for _, _, r in pairs])
  assert 0.4 < random_share < 0.6
  table = instances.pack_pairs(pairs, seq_len=64, cls_id=2, sep_id=3, pad_id=0)
  a, b, _ = pairs[0]
  row = table['input_ids'][0]
  assert row[0] == 2 and row[len(a) + 1] == 3 and row[len(a) + len(b) + 2] == 3
  assert table['token_type_ids'][0, len(a) + 2] == 1 and table['token_type_ids'][0, len(a) + 1] == 0
  assert table['attention_mask'][0].sum() == len(a) + len(b) + 3
  assert table['position_ids'][0, :5].tolist() == [0, 1, 2, 3, 4]


def test_sop_swaps_consecutive_segments_half_the_time():
  # Every token id unique: id = 1000 * document + position in it, so order is visible.
  docs = [[[1000 * d + 6 * s + k for k in range(6)] for s in range(12)] for d in range(300)]
  pairs = list(instances.sentence_pairs(docs, seq_len=40, short_seq_prob=0.1,
                                        objective='sop', rng=random.Random(0)))
  same_doc = [(a, b, label) for a, b, label in pairs if a[0] // 1000 == b[0] // 1000]
  assert len(same_doc) > 0.9 * len(pairs)  # only one-sentence chunks borrow a document
  swapped = [label for _, _, label in same_doc]
  assert 0.45 < np.mean(swapped) < 0.55
  for a, b, label in same_doc:
    assert (a[-1] < b[0]) == (label == 0)  # in order unless swapped
    assert a == sorted(a) and b == sorted(b)  # each segment is contiguous text


def test_single_segment_objective_has_no_label(tok):
  _, pairs = _pairs(tok, 'none')
  assert all(b is None and label == -1 and len(a) <= 62 for a, b, label in pairs)
  table = instances.pack_pairs(pairs, seq_len=64, cls_id=2, sep_id=3, pad_id=0)
  assert (table['token_type_ids'] == 0).all() and (table['nsp_labels'] == -1).all()


def test_packing_fills_rows_and_keeps_documents_apart(tok):
  docs = [[tok.encode(s) for s in d] for d in embedded.embedded_documents(300, seed=2)]
  table = instances.pack_documents(docs, seq_len=128, cls_id=2, sep_id=3, pad_id=0)
  segments, positions, ids = table['attention_mask'], table['position_ids'], table['input_ids']
  assert (segments == 0).mean() < 0.05  # padding under 5% of tokens
  for r in range(len(ids)):
    for seg in range(1, segments[r].max() + 1):
      where = np.flatnonzero(segments[r] == seg)
      assert ids[r, where[0]] == 2 and ids[r, where[-1]] == 3  # [CLS] ... [SEP]
      assert positions[r, where].tolist() == list(range(len(where)))  # from 0
  # Every token of every document is there, in order.
  body = ids[(ids != 2) & (ids != 3) & (segments > 0)]
  assert body.tolist() == [t for d in docs for s in d for t in s]
  assert (table['nsp_labels'] == -1).all()


def test_token_masking_statistics(tok):
  rng = np.random.default_rng(0)
  batch, length = 2048, 128
  ids = rng.integers(5, tok.vocab_size, size=(batch, length))
  lengths = rng.integers(20, length + 1, size=batch)
  ids[np.arange(length)[None] >= lengths[:, None]] = tok.pad_id
  ids[:, 0] = tok.cls_id
  special = tok.special_V[ids]
  out = masking.mask(ids, tok.word_start_V[ids], special, kind='token', rate=0.15,
                     max_predictions=length, rng=rng, vocab_size=tok.vocab_size,
                     mask_id=tok.mask_id, random_ids=np.flatnonzero(~tok.special_V))
  w = out['weights'].astype(bool)
  n = (~special).sum(1)
  assert np.array_equal(w.sum(1), np.minimum(length, np.maximum(1, np.rint(n * 0.15))))
  rows = np.nonzero(w)[0]
  pos = out['positions'][w]
  assert not special[rows, pos].any()  # special tokens are never chosen
  assert np.array_equal(out['targets'][w], ids[rows, pos])
  new = out['input_ids'][rows, pos]
  frac_mask = np.mean(new == tok.mask_id)
  frac_same = np.mean(new == ids[rows, pos])
  assert abs(frac_mask - 0.8) < 0.01 and abs(frac_same - 0.1) < 0.01 + 1 / tok.vocab_size
  untouched = np.ones_like(ids, bool)
  untouched[rows, pos] = False
  assert np.array_equal(out['input_ids'][untouched], ids[untouched])
  assert out['positions'].shape == out['targets'].shape == (batch, length)


def test_masking_pads_to_max_predictions_and_rejects_unknown_kind(tok):
  ids = np.array([[2, 10, 11, 12, 3, 0, 0, 0]])
  out = masking.mask(ids, tok.word_start_V[ids], tok.special_V[ids], kind='token', rate=0.5,
                     max_predictions=4, rng=np.random.default_rng(0),
                     vocab_size=tok.vocab_size, mask_id=tok.mask_id)
  assert out['weights'].tolist() == [[1, 1, 0, 0]]
  assert out['positions'][0, 2:].tolist() == [0, 0]
  with pytest.raises(UserError, match="masking kind 'spam'"):
    masking.mask(ids, ids, ids == 0, kind='spam', rate=0.15, max_predictions=2,
                 rng=np.random.default_rng(0), vocab_size=10, mask_id=4)


def _data_config(**overrides):
  from bertjax import config_lib
  c = config_lib.load_config(os.path.join(ROOT, 'experiments', 'quickstart.py') + ':local')
  return config_lib.apply_overrides(c, [f'{k}={v}' for k, v in overrides.items()]).data


def _tokenizer_for(workdir, data_cfg, seed=0):
  docs = embedded.embedded_documents(60, seed=seed)
  return pipeline.load_or_train_tokenizer(data_cfg, docs, str(workdir), seed=seed)


def test_trained_tokenizer_records_what_it_was_derived_from(tmp_path):
  tok = _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 200}))
  record = derived_tokenizer.read_record(str(tmp_path / 'tokenizer'))
  assert record == {'data.corpus': 'embedded', 'data.embedded_documents': 400, 'seed': 0,
                    'data.eval_fraction': 0.05,
                    'data.tokenizer.kind': 'sentencepiece', 'data.tokenizer.vocab_size': 200,
                    'data.tokenizer.model_type': 'bpe'}
  assert tok.vocab_size == 200
  # The same settings again: the tokenizer is kept, not retrained.
  before = os.path.getmtime(tmp_path / 'tokenizer' / 'spm.model')
  _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 200}))
  assert os.path.getmtime(tmp_path / 'tokenizer' / 'spm.model') == before


def test_stale_tokenizer_is_replaced_before_training_and_refused_after(tmp_path, capsys):
  _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 200}))
  capsys.readouterr()
  # A run that failed before training left it; the corrected run replaces it.
  tok = _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 150}))
  assert tok.vocab_size == 150
  assert 'replacing' in capsys.readouterr().out
  assert derived_tokenizer.read_record(
      str(tmp_path / 'tokenizer'))['data.tokenizer.vocab_size'] == 150
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\n')
  with pytest.raises(UserError, match=r"data\.corpus='embedded', but the config says "
                                      r"'/x/\*\.txt'.*new --workdir"):
    _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 150,
                                             'data.corpus': '/x/*.txt'}))
  (tmp_path / 'metrics.jsonl').unlink()
  (tmp_path / 'checkpoints' / '10').mkdir(parents=True)  # a checkpoint counts as started
  with pytest.raises(UserError, match=r'data\.tokenizer\.vocab_size=150.* 200'):
    _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 200}))
  assert tokenizer_lib.load(str(tmp_path / 'tokenizer')).vocab_size == 150  # kept


def test_tokenizer_without_a_record_is_trusted(tmp_path):
  # A workdir from before records (or an imported tokenizer): used whatever the config.
  tokenizer_lib.train_sentencepiece(
      (s for d in embedded.embedded_documents(60) for s in d),
      str(tmp_path / 'tokenizer' / 'spm.model'), vocab_size=180)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\n')
  tok = _tokenizer_for(tmp_path, _data_config(**{'data.tokenizer.vocab_size': 200}))
  assert tok.vocab_size == 180
  assert derived_tokenizer.read_record(str(tmp_path / 'tokenizer')) is None


def test_pipeline_holds_out_by_the_one_rule():
  docs = [[f'document {i} .'] for i in range(40)]
  train, held_out = splits.split_indices(len(docs), 0.1, seed=3)
  assert pipeline._split_documents(docs, 0.1, 3) == (
      [docs[i] for i in train], [docs[i] for i in held_out])


def test_stored_instances_read_across_shards_in_any_order_and_after_pickling(tmp_path,
                                                                             monkeypatch):
  import pickle
  from bertjax.data import instance_store
  rng = np.random.default_rng(0)
  n, length = 50, 8
  table = dict(input_ids=rng.integers(0, 300, (n, length), dtype=np.int32),
               token_type_ids=rng.integers(0, 2, (n, length), dtype=np.int32),
               attention_mask=rng.integers(0, 3, (n, length), dtype=np.int32),
               position_ids=np.tile(np.arange(length, dtype=np.int32), (n, 1)),
               nsp_labels=rng.integers(-1, 2, n, dtype=np.int32))
  monkeypatch.setattr(instance_store, 'ROWS_PER_SHARD', 16)  # 4 shards
  shards = instance_store.write(table, str(tmp_path), 'train')
  assert len(shards) == 4
  source = instance_store.InstanceSource(str(tmp_path), shards, length)
  assert len(source) == n
  indices = [49, 3, 17, 17, 0, 32, 31, 48]  # every shard, out of order, one twice
  for reader in (source, pickle.loads(pickle.dumps(source))):  # as grain's workers get it
    got = reader.rows(indices)
    assert set(got) == set(table)
    for key, value in table.items():
      assert got[key].dtype == np.int32 and got[key].flags.c_contiguous
      np.testing.assert_array_equal(got[key], value[indices], err_msg=key)
  with pytest.raises(IndexError):
    source.rows([n])
