"""Token classification: entity F1 on hand-counted cases (and against seqeval), CoNLL
and tfds reading, sub-token labels, long sentences cut into rows and mapped back,
bad input, and a tiny tagger that learns names."""
from __future__ import annotations

import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from seqeval import metrics as seqeval_metrics

from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError
from bertjax.models import heads
from bertjax.models.bert import BertConfig
from bertjax.tasks import common, tag

IGNORE = common.IGNORE
VOCAB = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'anna', 'lives', 'in', 'ber', '##lin',
         '.', 'new', 'york')
CONLL = """-DOCSTART- -X- -X- O

Anna NNP B-NP B-PER
lives VBZ B-VP O
in IN B-PP O
Berlin NNP B-NP B-LOC
. . O O

-DOCSTART- -X- -X- O

New NNP B-NP B-LOC
York NNP I-NP I-LOC
\u200b X X O
"""


@pytest.fixture
def tok(tmp_path):
  (tmp_path / 'vocab.txt').write_text('\n'.join(VOCAB) + '\n', encoding='utf-8')
  return WordPieceTokenizer(str(tmp_path / 'vocab.txt'))


def config(train='', eval='', **overrides):
  cfg = tag.task_config()
  cfg.update(dict(train=train, eval=eval, **overrides))
  return cfg


def write(path, text):
  path.write_text(text, encoding='utf-8')
  return str(path)


def test_entities_follow_conlleval_chunking():
  assert tag.entities(['B-PER', 'I-PER', 'O', 'B-LOC']) == [('PER', 0, 1), ('LOC', 3, 3)]
  # IOB1: I- after O starts a chunk; B- only splits two adjacent chunks of one type.
  assert tag.entities(['I-PER', 'I-PER', 'B-PER', 'O', 'I-LOC']) == [
      ('PER', 0, 1), ('PER', 2, 2), ('LOC', 4, 4)]
  assert tag.entities(['B-PER', 'I-LOC', 'I-LOC']) == [('PER', 0, 0), ('LOC', 1, 2)]
  assert tag.entities(['S-PER', 'B-LOC', 'E-LOC', 'I-LOC']) == [
      ('PER', 0, 0), ('LOC', 1, 2), ('LOC', 3, 3)]
  assert tag.entities(['O', 'O']) == []


def test_entity_f1_hand_counted():
  gold = [['B-PER', 'I-PER', 'O', 'B-LOC'], ['B-ORG', 'O']]
  # PER right, LOC typed MISC, ORG right, a spurious LOC: 2 of 4 predicted, 2 of 3 gold.
  pred = [['B-PER', 'I-PER', 'O', 'B-MISC'], ['B-ORG', 'B-LOC']]
  scores = tag.entity_f1(gold, pred)
  assert scores == pytest.approx(dict(precision=1 / 2, recall=2 / 3, f1=4 / 7))
  # A partial span counts for nothing; IOB1 and IOB2 spell the same chunks.
  assert tag.entity_f1([['B-PER', 'I-PER']], [['B-PER', 'O']])['f1'] == 0
  assert tag.entity_f1([['B-PER', 'I-PER', 'B-PER']], [['I-PER', 'I-PER', 'B-PER']])['f1'] == 1
  assert tag.entity_f1([['O']], [['O']]) == dict(precision=0, recall=0, f1=0)
  with pytest.raises(ValueError, match='2 gold tags but 1'):
    tag.entity_f1([['O', 'O']], [['O']])


def test_entity_f1_matches_seqeval_on_random_tags():
  rng = random.Random(0)
  tags = ('O', 'O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC', 'E-LOC', 'S-PER')
  for _ in range(200):
    lengths = [rng.randint(1, 8) for _ in range(rng.randint(1, 4))]
    gold = [[rng.choice(tags) for _ in range(n)] for n in lengths]
    pred = [[rng.choice(tags) for _ in range(n)] for n in lengths]
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # seqeval warns when a score divides by zero
      want = dict(precision=seqeval_metrics.precision_score(gold, pred),
                  recall=seqeval_metrics.recall_score(gold, pred),
                  f1=seqeval_metrics.f1_score(gold, pred))
    assert tag.entity_f1(gold, pred) == pytest.approx(want), (gold, pred)


def test_conll_file_labels_first_pieces_and_collects_tags(tmp_path, tok):
  split = tag.load_split(config(write(tmp_path / 'train.txt', CONLL)), 'train', tok, 16)
  assert split.label_names == ('O', 'B-LOC', 'B-PER', 'I-LOC')
  O, B_LOC, B_PER, I_LOC = range(4)
  v = {p: i for i, p in enumerate(VOCAB)}
  assert len(split) == 2 and split.source.endswith('train.txt')
  np.testing.assert_array_equal(split.features['input_ids'][:, :9], [
      [v['[CLS]'], v['anna'], v['lives'], v['in'], v['ber'], v['##lin'], v['.'], v['[SEP]'], 0],
      [v['[CLS]'], v['new'], v['york'], tok.unk_id, v['[SEP]'], 0, 0, 0, 0]])  # '\u200b': [UNK]
  np.testing.assert_array_equal(split.features['labels'][:, :9], [
      [IGNORE, B_PER, O, O, B_LOC, IGNORE, O, IGNORE, IGNORE],
      [IGNORE, B_LOC, I_LOC, O, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]])
  np.testing.assert_array_equal(split.features['attention_mask'].sum(1), [8, 5])
  assert tag.batch_count(split.features) == 8  # the loss averages over first pieces
  assert split.features['labels'].dtype == np.int32
  assert split.meta.gold == [['B-PER', 'O', 'O', 'B-LOC', 'O'], ['B-LOC', 'I-LOC', 'O']]

  every = tag.load_split(config(split.source, label_all_subwords=True), 'train', tok, 16)
  assert every.features['labels'][0, 5] == I_LOC  # '##lin' of a B-LOC word: I-LOC
  fixed = tag.load_split(config(split.source, labels=('O', 'B-PER', 'B-LOC', 'I-LOC')),
                         'train', tok, 16)
  assert fixed.label_names == ('O', 'B-PER', 'B-LOC', 'I-LOC')
  assert fixed.features['labels'][0, 1] == 1


def test_long_sentence_is_cut_into_rows_and_every_word_scored(tmp_path, tok):
  path = write(tmp_path / 'train.txt', CONLL)
  split = tag.load_split(config(path, path), 'eval', tok, 5,
                         label_names=('O', 'B-LOC', 'B-PER', 'I-LOC'))
  # Three pieces a row: [anna lives in] [ber ##lin .] [new york [UNK]].
  assert len(split) == 3
  np.testing.assert_array_equal(split.meta.sentence_N, [0, 0, 1])
  np.testing.assert_array_equal(split.meta.word_NL, [
      [-1, 0, 1, 2, -1], [-1, 3, -1, 4, -1], [-1, 0, 1, 2, -1]])
  labels_NL = split.features['labels']
  noise_NL = np.random.default_rng(0).integers(0, 4, labels_NL.shape)
  perfect_NL = np.where(labels_NL == IGNORE, noise_NL, labels_NL)  # unscored: anything
  assert tag.compute_metrics(dict(predictions=perfect_NL), split) == dict(
      precision=1.0, recall=1.0, f1=1.0, accuracy=1.0)
  perfect_NL[1, 1] = 0  # 'Berlin' -> O, in the sentence's second row
  assert tag.compute_metrics(dict(predictions=perfect_NL), split) == pytest.approx(dict(
      precision=1.0, recall=2 / 3, f1=0.8, accuracy=7 / 8))


def test_bad_input_names_file_and_line(tmp_path, tok):
  bad = write(tmp_path / 'bad.txt', 'Anna B-PER\nlives\n')
  with pytest.raises(UserError, match=r"bad\.txt, line 2: 'lives' has no tag"):
    tag.load_split(config(bad), 'train', tok, 16)
  dev = write(tmp_path / 'dev.txt', 'Anna B-PER\n\nin O\nIBM B-ORG\n')
  with pytest.raises(UserError, match=r"dev\.txt, line 4: unknown label 'B-ORG'; the training "
                                      r"data has \['O', 'B-PER'\]"):
    tag.load_split(config(eval=dev), 'eval', tok, 16, label_names=('O', 'B-PER'))
  with pytest.raises(UserError, match=r"dev\.txt, line 4: tag 'B-ORG' is not in "
                                      r"config\.task\.labels"):
    tag.load_split(config(dev, labels=('O', 'B-PER')), 'train', tok, 16)
  with pytest.raises(UserError, match='config.task.eval is not set'):
    tag.load_split(config(dev), 'eval', tok, 16)
  with pytest.raises(UserError, match='absent.txt.* not found'):
    tag.load_split(config(str(tmp_path / 'absent.txt')), 'train', tok, 16)
  with pytest.raises(UserError, match='holds no tagged sentence'):
    tag.load_split(config(write(tmp_path / 'empty.txt', '-DOCSTART- O\n\n')), 'train', tok, 16)


class TinyNer(tfds.core.GeneratorBasedBuilder):
  """A stand-in for conll2003: 'tokens' words and 'ner' ClassLabel tags."""
  VERSION = tfds.core.Version('1.0.0')
  NAMES = ('O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'tokens': tfds.features.Sequence(tfds.features.Text()),
        'ner': tfds.features.Sequence(tfds.features.ClassLabel(names=self.NAMES))}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples([(['Anna', 'lives', 'in', 'Berlin'],
                                               [1, 0, 0, 3])]),
            'dev': self._generate_examples([(['New', 'York'], [3, 4]), ([], [])])}

  def _generate_examples(self, sentences):
    for i, (tokens, ner) in enumerate(sentences):
      yield i, {'tokens': tokens, 'ner': ner}


def test_tfds_dataset_with_tokens_and_ner(tmp_path, tok, monkeypatch):
  TinyNer(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  cfg = config('tfds:tiny_ner', 'tfds:tiny_ner')  # eval's split defaults to 'dev'
  train = tag.load_split(cfg, 'train', tok, 16)
  assert train.label_names == TinyNer.NAMES  # the ClassLabel's order, unused tags too
  np.testing.assert_array_equal(train.features['labels'][0, :7],
                                [IGNORE, 1, 0, 0, 3, IGNORE, IGNORE])
  dev = tag.load_split(cfg, 'eval', tok, 16, train.label_names)
  assert dev.meta.gold == [['B-LOC', 'I-LOC']]  # the empty sentence is skipped
  np.testing.assert_array_equal(dev.features['labels'][0, :4], [IGNORE, 3, 4, IGNORE])
  with pytest.raises(UserError, match="no split 'test'"):
    tag.load_split(config('tfds:tiny_ner:test'), 'train', tok, 16)


PEOPLE = ('anna', 'boris', 'clara', 'david', 'elena', 'felix', 'greta', 'hugo')
SURNAMES = ('smith', 'jones', 'brown', 'weber')
CITIES = ('paris', 'berlin', 'rome', 'madrid', 'oslo', 'vienna', 'lisbon', 'athens')
TEMPLATES = ('{P} lives in {C} .', 'yesterday {P} met {P} near {C} .',
             'in {C} the weather was cold .', 'the train from {C} to {C} was late .',
             'we saw {P} at the market .', '{P} and {P} went to {C} by bus .')
# Random initializers compile in a third of the time unoptimized; they run once.
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def generated_conll(rng: random.Random, n: int) -> str:
  """Sentences whose entities come from fixed name lists: PER may take a surname."""
  lines = []
  for _ in range(n):
    for word in rng.choice(TEMPLATES).split():
      if word == '{P}':
        lines.append(f'{rng.choice(PEOPLE)} B-PER')
        if rng.random() < 0.5:
          lines.append(f'{rng.choice(SURNAMES)} I-PER')
      elif word == '{C}':
        lines.append(f'{rng.choice(CITIES)} B-LOC')
      else:
        lines.append(f'{word} O')
    lines.append('')
  return '\n'.join(lines)


def test_tiny_tagger_learns_names(tmp_path):
  rng = random.Random(0)
  train_path = write(tmp_path / 'train.txt', generated_conll(rng, 128))
  eval_path = write(tmp_path / 'eval.txt', generated_conll(rng, 32))
  # Whole words, but each city in two pieces, so continuations are skipped too.
  words = {w for t in TEMPLATES for w in t.split() if '{' not in w} | {*PEOPLE, *SURNAMES}
  cities = {p for c in CITIES for p in (c[:3], '##' + c[3:])}
  (tmp_path / 'vocab.txt').write_text('\n'.join([*VOCAB[:5], *sorted(words | cities)]),
                                      encoding='utf-8')
  tok = WordPieceTokenizer(str(tmp_path / 'vocab.txt'))
  cfg = config(train_path, eval_path)
  train = tag.load_split(cfg, 'train', tok, 16)
  evals = tag.load_split(cfg, 'eval', tok, 16, train.label_names)
  model_cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                         intermediate_size=64, max_position_embeddings=16)
  build = lambda: heads.build(tag.MODEL_KIND, model_cfg, num_labels=len(train.label_names),
                              rngs=nnx.Rngs(0))
  graphdef = nnx.graphdef(nnx.eval_shape(build))
  optimizer = optax.adam(3e-3)

  def init():
    params = nnx.state(build())
    return params, optimizer.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    def loss_fn(p):
      sums = tag.batch_sums(nnx.merge(graphdef, p), batch)
      return sums['loss_sum'] / sums['count'], sums
    grads, sums = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, tag.train_metrics(sums)

  predict = jax.jit(lambda p, b: tag.predict(nnx.merge(graphdef, p), b))
  eval_batch = jax.tree.map(jnp.asarray, evals.features)
  params, opt_state = jax.jit(init, compiler_options=FAST_COMPILE)()
  before = tag.compute_metrics(predict(params, eval_batch), evals)
  batch = jax.tree.map(jnp.asarray, train.features)
  for _ in range(30):
    params, opt_state, metrics = step(params, opt_state, batch)
  after = tag.compute_metrics(predict(params, eval_batch), evals)
  assert metrics['loss'] < 0.3 and metrics['accuracy'] > 0.9, metrics
  assert before['f1'] < 0.3 and after['f1'] > 0.9, (before, after)
