import json
import random
import sys

import pytest
import sentencepiece as spm
import transformers

from bertjax.data import corpus
from bertjax.data import tokenizer as tokenizer_lib
from bertjax.data.hf_tokenizer import write_hf_tokenizer
from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError

SENTENCES = [s for d in corpus.embedded_documents(200) for s in d]
# Capitals, digits, punctuation and accents, so they get pieces of their own.
EXTRA = ['Anna Smith was born in Paris, France, on 12 May 1990!',
         'The café sold 3.50 EUR croissants (and 1,000 more) - naïve?',
         'Numbers like 42, 2024 and 3.14159 appear; so do "quotes" and [brackets].'] * 20
TEXTS = [
    'Anna is a baker in Paris.',
    'anna is a baker in paris',
    '   leading, trailing and   multiple    spaces   ',
    'tabs\tand\nnewlines\r\nand\u3000ideographic\u00a0spaces',
    'unknown characters: 日本語 한국어 😀 ☃ ♞ ∑',
    'numbers 0 1 12 123 1234 3.14159 1,000,000 -5 +7 50%',
    'punctuation!!! ?? ... --- (( )) [] {} <> @#$%^&*_=+~`|\\/',
    'fullwidth ＡＢＣ １２３ ligature ﬁne ½ ™ ① ㎏',
    'Café naïve résumé ÉCOLE Ångström',
    'control\x00chars\x07and\u200bzero\ufeffwidth',
    'a literal \u2581 meta space',
    'CAPITALS MiXeD CaSe',
    '',
    '   ',
    'x',
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
  """Words, symbols and odd whitespace.

  No combining marks: `tokenizers`' Precompiled normalizer drops a mark that
  follows a character it rewrites (U+3000 then U+0301), where SentencePiece keeps it.
  """
  rng = random.Random(seed)
  words = sorted({w + end for s in SENTENCES for w in s.split() for end in ('', ' ')})
  symbols = [chr(c) for c in [*range(0x20, 0x7f), *range(0xa1, 0x250), *range(0xff01, 0xff5f),
                              0x2581, 0x3000, 0xa0, 0x2028, 0x200b, 0x1f600, 0x4e2d, 0xac00]]
  spaces = [' ', '  ', '\t', '\n', ' \r\n ']
  kinds = rng.choices([words, symbols, spaces], weights=[6, 3, 1], k=12 * n)
  return [''.join(rng.choice(kinds.pop()) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def _assert_same_ids(ours, theirs, texts):
  got = theirs(texts)['input_ids']
  for text, ids in zip(texts, got):
    assert ids == [ours.cls_id] + ours.encode(text) + [ours.sep_id], repr(text)


def _assert_same_pairs(ours, theirs, pairs):
  for a, b in pairs:
    enc = theirs(a, b)
    ids_a, ids_b = ours.encode(a), ours.encode(b)
    assert enc['input_ids'] == [ours.cls_id, *ids_a, ours.sep_id, *ids_b, ours.sep_id]
    assert enc['token_type_ids'] == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)


@pytest.fixture(scope='module', params=['unigram', 'bpe'])
def sentencepiece_export(request, tmp_path_factory):
  tmp = tmp_path_factory.mktemp(request.param)
  ours = tokenizer_lib.train_sentencepiece(SENTENCES + EXTRA, str(tmp / 'sp.model'),
                                           vocab_size=400, model_type=request.param)
  write_hf_tokenizer(ours, str(tmp / 'hf'), model_max_length=128)
  return ours, transformers.AutoTokenizer.from_pretrained(str(tmp / 'hf')), tmp / 'hf'


def test_sentencepiece_ids_match(sentencepiece_export):
  ours, theirs, _ = sentencepiece_export
  texts = TEXTS + EXTRA[:3] + SENTENCES[:200] + _random_texts(1000)
  _assert_same_ids(ours, theirs, texts)
  assert any(ours.unk_id in ours.encode(t) for t in texts)


def test_sentencepiece_pairs_and_config(sentencepiece_export):
  ours, theirs, out_dir = sentencepiece_export
  _assert_same_pairs(ours, theirs, [(TEXTS[0], TEXTS[4]), (EXTRA[0], '   '), (' x ', SENTENCES[1])])
  assert (theirs.pad_token_id, theirs.unk_token_id, theirs.cls_token_id, theirs.sep_token_id,
          theirs.mask_token_id) == (0, 1, 2, 3, 4)
  assert theirs.model_max_length == 128
  assert len(theirs(' '.join(SENTENCES), truncation=True)['input_ids']) == 128
  assert (out_dir / 'spiece.model').read_bytes() == open(ours.path, 'rb').read()
  ids = theirs(SENTENCES[0])['input_ids']
  assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids) == SENTENCES[0]


def test_sentencepiece_literal_special_tokens_and_batches_match(sentencepiece_export):
  ours, theirs, _ = sentencepiece_export
  texts = ['anna is the [MASK] of paris', 'a[SEP]b [CLS][PAD] [UNK].', ' [MASK] ', '[mask] [MASK',
           'no special tokens']
  expected = theirs(texts, add_special_tokens=False)['input_ids']
  assert tokenizer_lib.encode_with_special_tokens(ours, texts) == expected
  assert ours.mask_id in expected[0]
  assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
  assert ours.mask_id not in ours.encode(texts[0])  # corpora read it as text


def test_sentencepiece_export_needs_protobuf(tmp_path, monkeypatch):
  ours = tokenizer_lib.train_sentencepiece(SENTENCES, str(tmp_path / 'sp.model'), vocab_size=100)
  monkeypatch.delattr(spm, 'sentencepiece_model_pb2', raising=False)
  monkeypatch.setitem(sys.modules, 'sentencepiece.sentencepiece_model_pb2', None)
  with pytest.raises(UserError, match='pip install protobuf'):
    write_hf_tokenizer(ours, str(tmp_path / 'hf'))


def test_unsupported_sentencepiece_options_are_user_errors(tmp_path):
  path = str(tmp_path / 'sp.model')
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES), model_prefix=str(tmp_path / 'sp'), vocab_size=100,
      pad_id=0, pad_piece='[PAD]', unk_id=1, unk_piece='[UNK]', bos_id=-1, eos_id=-1,
      control_symbols=['[CLS]', '[SEP]', '[MASK]'], user_defined_symbols=['<url>'],
      hard_vocab_limit=False, minloglevel=2)
  with pytest.raises(UserError, match='user_defined_symbols'):
    write_hf_tokenizer(tokenizer_lib.SentencePieceTokenizer(path), str(tmp_path / 'hf'))


@pytest.mark.parametrize('do_lower_case', [True, False])
def test_wordpiece_round_trip(tmp_path, do_lower_case):
  pieces = ['[PAD]', '[unused0]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'anna', 'Anna', 'is', 'a',
            'bake', '##r', '##s', 'in', 'paris', 'Paris', 'cafe', 'café', '.', ',', '!', '1', '##2']
  (tmp_path / 'vocab.txt').write_text(''.join(p + '\n' for p in pieces), encoding='utf-8')
  ours = WordPieceTokenizer(str(tmp_path / 'vocab.txt'), do_lower_case=do_lower_case)
  write_hf_tokenizer(ours, str(tmp_path / 'hf'), model_max_length=64)
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'hf'))
  assert type(theirs).__name__.startswith('BertTokenizer')
  config = json.loads((tmp_path / 'hf' / 'tokenizer_config.json').read_text())
  assert config['do_lower_case'] == do_lower_case and theirs.model_max_length == 64
  assert (theirs.pad_token_id, theirs.unk_token_id, theirs.mask_token_id) == (0, 2, 5)
  texts = TEXTS + ['Anna is a baker in Paris, 1212!', 'ANNA bakers café CAFÉ 112']
  _assert_same_ids(ours, theirs, texts)
  _assert_same_pairs(ours, theirs, [(texts[-2], texts[-1]), ('', 'anna')])
