"""Masking kinds against the published recipes, on generated and real text.

Rows are [CLS] A [SEP] B [SEP] [PAD]... from a small BPE SentencePiece (vocab 300,
so many words have several pieces) or a WordPiece vocabulary with '##' pieces.
"""
import os
import random

import numpy as np
import pytest

from bertjax.data import corpus, masking, philox_rows, pmi, tokenizer as tokenizer_lib
from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError

WIKITEXT = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'wikitext2',
                        'valid.txt')
WORD_KINDS = ('whole_word', 'span', 'ngram', 'pmi')
# Each fixture's PMI vocabulary, built from its own documents, by tokenizer.
_PMI_VOCABS = {}


def _with_pmi_vocab(tok, docs):
  ngrams = pmi.build((s for d in docs for s in d), tok, min_count=3, size=300)
  _PMI_VOCABS[id(tok)] = pmi.NgramVocab([g['ids'] for g in ngrams], pmi.MAX_N)
  return tok, docs


@pytest.fixture(scope='module')
def sp(tmp_path_factory):
  docs = corpus.embedded_documents(300, seed=0)
  path = tmp_path_factory.mktemp('tok') / 'spm.model'
  tok = tokenizer_lib.train_sentencepiece((s for d in docs for s in d), str(path),
                                          vocab_size=300, model_type='bpe')
  return _with_pmi_vocab(tok, [[tok.encode(s) for s in d] for d in docs])


@pytest.fixture(scope='module')
def wordpiece(tmp_path_factory):
  stems = ['play', 'walk', 'jump', 'talk', 'read', 'help', 'cat', 'dog', 'bird', 'the', 'a']
  suffixes = ['##s', '##ing', '##ed', '##er', '##ful', '##ness']
  path = tmp_path_factory.mktemp('wp') / 'vocab.txt'
  path.write_text('\n'.join(list(tokenizer_lib.SPECIAL_TOKENS) + stems + suffixes + ['.']) + '\n',
                  encoding='utf-8')
  tok = WordPieceTokenizer(str(path))
  rng = random.Random(0)
  def word():
    return rng.choice(stems) + ''.join(s[2:] for s in rng.sample(suffixes, rng.randint(0, 2)))
  docs = [[tok.encode(' '.join(word() for _ in range(rng.randint(4, 12))) + ' .')
           for _ in range(8)] for _ in range(200)]
  return _with_pmi_vocab(tok, docs)


def _rows(docs, tok, batch, length, seed):
  """[CLS] A [SEP] B [SEP] then [PAD]: A and B from consecutive sentences of a document."""
  rng = random.Random(seed)
  ids = np.full((batch, length), tok.pad_id, np.int64)
  for b in range(batch):
    doc = rng.choice(docs)
    i = rng.randrange(len(doc))
    a, rest = [], []
    for part in (a, rest):
      while len(part) < length:
        part.extend(doc[i % len(doc)])
        i += 1
    budget = rng.randint(length // 2, length - 3)
    cut = rng.randint(1, budget - 1)
    row = [tok.cls_id] + a[:cut] + [tok.sep_id] + rest[:budget - cut] + [tok.sep_id]
    ids[b, :len(row)] = row
  return ids


def _mask(tok, ids, kind, seed=0, rate=0.15, max_predictions=None, **options):
  if kind == 'pmi':
    options.setdefault('ngram_vocab', _PMI_VOCABS[id(tok)])
  return masking.mask(ids, tok.word_start_V[ids], tok.special_V[ids], kind=kind, rate=rate,
                      max_predictions=max_predictions or ids.shape[1],
                      rng=np.random.default_rng(seed), vocab_size=tok.vocab_size,
                      mask_id=tok.mask_id, random_ids=np.flatnonzero(~tok.special_V), **options)


def _chosen(out, shape):
  chosen = np.zeros(shape, bool)
  w = out['weights'] > 0
  chosen[np.nonzero(w)[0], out['positions'][w]] = True
  return chosen


def _word_ids(tok, ids):
  """Each token's word number in its row (-1 on special tokens): a word is a
  word-start piece (or a piece after a special token) and the non-start pieces after it."""
  special = tok.special_V[ids]
  after_special = np.concatenate([np.ones((len(ids), 1), bool), special[:, :-1]], 1)
  starts = ~special & (tok.word_start_V[ids] | after_special)
  return np.where(special, -1, np.cumsum(starts, 1) - 1)


def _runs(chosen_row):
  """(start, end) of each maximal run of chosen positions."""
  edges = np.diff(np.concatenate([[0], chosen_row.astype(int), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _run_lengths_in_words(tok, ids, out):
  chosen, words = _chosen(out, ids.shape), _word_ids(tok, ids)
  return [len(np.unique(words[b, s:e + 1])) for b in range(len(ids)) for s, e in _runs(chosen[b])]


def _check_invariants(tok, ids, out, max_predictions, rate=0.15):
  batch, length = ids.shape
  p = max_predictions
  special = tok.special_V[ids]
  for key in ('input_ids', 'positions', 'targets', 'weights'):
    assert out[key].shape == ((batch, length) if key == 'input_ids' else (batch, p))
  assert out['input_ids'].dtype == out['positions'].dtype == out['targets'].dtype == np.int32
  w = out['weights'] > 0
  n = (~special).sum(1)
  assert (w.sum(1) <= np.minimum(p, np.maximum(1, np.rint(n * rate)))).all()
  assert (w == (np.arange(p) < w.sum(1, keepdims=True))).all()  # chosen ones first
  assert (out['positions'][~w] == 0).all() and (out['targets'][~w] == 0).all()
  pos = np.where(w, out['positions'], length)
  assert (np.diff(pos, axis=1) > 0)[w[:, 1:]].all()  # ascending, no repeats
  chosen = _chosen(out, ids.shape)
  assert not (chosen & special).any()
  rows = np.nonzero(w)[0]
  assert np.array_equal(out['targets'][w], ids[rows, out['positions'][w]])
  assert np.array_equal(out['input_ids'][~chosen], ids[~chosen])


@pytest.mark.parametrize('kind', masking.KINDS)
def test_invariants_and_determinism(sp, kind):
  tok, docs = sp
  ids = _rows(docs, tok, 64, 128, seed=1)
  out = _mask(tok, ids, kind, seed=3, rate=0.3, max_predictions=20)  # 20 often binds
  _check_invariants(tok, ids, out, 20, rate=0.3)
  assert ('span_left' in out) == (kind == 'span')
  again = _mask(tok, ids, kind, seed=3, rate=0.3, max_predictions=20)
  other = _mask(tok, ids, kind, seed=4, rate=0.3, max_predictions=20)
  assert out.keys() == again.keys() and all(np.array_equal(out[k], again[k]) for k in out)
  assert not np.array_equal(out['positions'], other['positions'])
  k = np.minimum(20, np.rint((~tok.special_V[ids]).sum(1) * 0.3))
  assert (k == 20).mean() > 0.3
  if kind == 'token':
    assert np.array_equal(out['weights'].sum(1), k)


@pytest.mark.parametrize('kind', masking.KINDS)
def test_masked_fraction_and_80_10_10(sp, kind):
  tok, docs = sp
  ids = _rows(docs, tok, 8192 if kind == 'span' else 4096, 128, seed=2)
  out = _mask(tok, ids, kind)
  _check_invariants(tok, ids, out, 128)
  special = tok.special_V[ids]
  assert abs(out['weights'].sum() / (~special).sum() - 0.15) < 0.005
  chosen = _chosen(out, ids.shape)
  new = out['input_ids']
  if kind != 'span':
    is_mask, same = new[chosen] == tok.mask_id, new[chosen] == ids[chosen]
  else:  # one decision per span: all [MASK], all kept, or all random (never [MASK])
    is_mask, same = [], []
    for b in range(len(ids)):
      for s, e in _runs(chosen[b]):
        masked = new[b, s:e + 1] == tok.mask_id
        assert masked.all() or not masked.any()
        is_mask.append(masked.all())
        same.append((new[b, s:e + 1] == ids[b, s:e + 1]).all())
    assert len(is_mask) > 25_000
    is_mask, same = np.array(is_mask), np.array(same)
  assert abs(is_mask.mean() - 0.8) < 0.01
  assert abs(same.mean() - 0.1) < 0.01 and abs((~is_mask & ~same).mean() - 0.1) < 0.01


def _assert_whole_words(tok, ids, out):
  words, chosen = _word_ids(tok, ids), _chosen(out, ids.shape)
  for b in range(len(ids)):
    w = words[b][words[b] >= 0]
    hit = np.bincount(w, weights=chosen[b][words[b] >= 0], minlength=w.max() + 1)
    size = np.bincount(w)
    assert ((hit == 0) | (hit == size)).all(), f'row {b} splits a word'


@pytest.mark.parametrize('kind', WORD_KINDS)
@pytest.mark.parametrize('vocab', ['sp', 'wordpiece'])
def test_word_kinds_never_split_a_word(request, vocab, kind):
  tok, docs = request.getfixturevalue(vocab)
  ids = _rows(docs, tok, 512, 128, seed=5)
  special = tok.special_V[ids]
  assert (~tok.word_start_V[ids][~special]).mean() > 0.25  # many words have several pieces
  out = _mask(tok, ids, kind, max_predictions=40)
  _check_invariants(tok, ids, out, 40)
  _assert_whole_words(tok, ids, out)
  assert abs(out['weights'].sum() / (~special).sum() - 0.15) < 0.01


def test_span_lengths_follow_the_truncated_geometric(sp):
  """SpanBERT's setting (one 512-token segment, 15%): masked spans average the mean
  of Geometric(0.2) truncated to 1..10 and renormalised, as SpanBERT samples it
  (3.80; clipping with min(l, 10) would give 4.46)."""
  tok, docs = sp
  stream = [t for d in docs for s in d for t in s]
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(stream) - 512, size=1200)
  ids = np.array([[tok.cls_id] + stream[s:s + 510] + [tok.sep_id] for s in starts])
  out = _mask(tok, ids, 'span', max_predictions=100)
  lengths = _run_lengths_in_words(tok, ids, out)
  l = np.arange(1, 11)
  prob = 0.2 * 0.8 ** (l - 1)
  expected = (l * prob).sum() / prob.sum()
  assert abs(expected - 3.797) < 1e-3
  assert abs(np.mean(lengths) - expected) < 0.15, np.mean(lengths)


def test_span_boundaries_and_offsets_on_hand_made_rows():
  # [CLS] w0 w0 w0 [SEP] w1 w2 [SEP] [PAD] [PAD]: rate 1 takes every word.
  ids = np.array([[2, 10, 11, 12, 3, 13, 14, 3, 0, 0]])
  starts = np.array([[0, 1, 0, 0, 0, 0, 1, 0, 0, 0]], bool)
  special = np.isin(ids, [0, 2, 3])
  out = masking.mask(ids, starts, special, kind='span', rate=1.0, max_predictions=6,
                     rng=np.random.default_rng(0), vocab_size=20, mask_id=4)
  assert out['positions'].tolist() == [[1, 2, 3, 5, 6, 0]]
  assert out['span_left'].tolist() == [[0, 0, 0, 4, 4, 0]]
  assert out['span_right'].tolist() == [[4, 4, 4, 7, 7, 0]]
  assert out['span_offset'].tolist() == [[0, 1, 2, 0, 1, 0]]
  # [CLS] (w0 w0) (w1) (w2) [SEP] with a budget of 2: w0, or w1 w2 as one span.
  ids = np.array([[2, 10, 11, 12, 13, 3]])
  starts = np.array([[0, 1, 0, 1, 1, 0]], bool)
  seen = set()
  for seed in range(40):
    out = masking.mask(ids, starts, np.isin(ids, [2, 3]), kind='span', rate=0.5,
                       max_predictions=3, rng=np.random.default_rng(seed), vocab_size=20,
                       mask_id=4)
    got = tuple(tuple(out[k][0, :2].tolist()) for k in ('positions', 'span_left',
                                                        'span_right', 'span_offset'))
    assert got in {((1, 2), (0, 0), (3, 3), (0, 1)), ((3, 4), (2, 2), (5, 5), (0, 1))}
    seen.add(got[0])
  assert len(seen) == 2
  # No special tokens around the text: boundaries are clipped into the row.
  out = masking.mask(np.array([[10, 11]]), np.ones((1, 2), bool), np.zeros((1, 2), bool),
                     kind='span', rate=1.0, max_predictions=2, rng=np.random.default_rng(0),
                     vocab_size=20, mask_id=4)
  assert out['span_left'].tolist() == [[0, 0]] and out['span_right'].tolist() == [[1, 1]]


@pytest.mark.parametrize('kind', WORD_KINDS)
def test_a_word_over_the_budget_is_skipped_not_an_end(kind):
  """[CLS] (a ##b ##c) d e f [SEP] with a budget of 2: the 3-piece word never fits,
  and drawing it first must not stop the search (BERT, ALBERT and SpanBERT go on)."""
  ids = np.array([[2, 10, 11, 12, 13, 14, 15, 3]])
  starts = np.array([[0, 1, 0, 0, 1, 1, 1, 0]], bool)
  for seed in range(40):
    out = masking.mask(ids, starts, np.isin(ids, [2, 3]), kind=kind, rate=1 / 3,
                       max_predictions=4, rng=np.random.default_rng(seed), vocab_size=20,
                       mask_id=4, ngram_vocab=pmi.NgramVocab([(17, 18)], pmi.MAX_N))
    assert out['weights'].sum() == 2 and set(out['positions'][0, :2].tolist()) <= {4, 5, 6}


@pytest.mark.parametrize('kind', ['span', 'ngram'])
def test_spans_and_ngrams_stop_at_special_tokens(kind):
  """[CLS] w [SEP] w [SEP] ...: every segment is one word, so chosen words must be as
  scattered as single words; a span or n-gram running over [SEP] would bunch them."""
  batch, length = 1000, 128
  ids = np.where(np.arange(length) % 2 == 1, 10, 3)[None].repeat(batch, 0)
  ids[:, 0] = 2
  out = masking.mask(ids, np.ones_like(ids, bool), ids != 10, kind=kind, rate=0.15,
                     max_predictions=20, rng=np.random.default_rng(0), vocab_size=20, mask_id=4)
  chosen = _chosen(out, ids.shape)[:, 1::2]
  assert out['weights'].sum() == batch * 10  # 15% of 64 words
  next_also = (chosen[:, :-1] & chosen[:, 1:]).sum() / chosen[:, :-1].sum()
  assert next_also < 0.2  # 9/63 for independent words


def test_ngram_lengths_follow_one_over_n(sp):
  """Long rows at a low rate, so that n-grams rarely touch or get cut by the budget:
  the runs of masked words then show p(n) = (1/n) / (1 + 1/2 + 1/3)."""
  tok, docs = sp
  stream = [t for d in docs for s in d for t in s]
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(stream) - 4096, size=300)
  ids = np.array([[tok.cls_id] + stream[s:s + 4094] + [tok.sep_id] for s in starts])
  out = _mask(tok, ids, 'ngram', rate=0.03, max_predictions=200)
  lengths = _run_lengths_in_words(tok, ids, out)
  share = np.bincount(lengths, minlength=5)[1:] / len(lengths)
  expected = np.array([6, 3, 2]) / 11
  assert len(lengths) > 15_000
  assert np.abs(share[:3] - expected).max() < 0.025 and share[3:].sum() < 0.01, share


@pytest.fixture(scope='module')
def wiki(tmp_path_factory):
  """WikiText-2 paragraphs (one document each) and a BPE SentencePiece trained on them."""
  if not os.path.isfile(WIKITEXT):
    pytest.skip('no ../shared/data (real text)')
  with open(WIKITEXT, encoding='utf-8') as f:
    lines = [line.strip() for line in f if line.strip() and not line.startswith(' =')][:600]
  docs = [[s.strip() + ' .' for s in line.split(' . ') if s.strip()] for line in lines]
  path = tmp_path_factory.mktemp('wiki') / 'spm.model'
  tok = tokenizer_lib.train_sentencepiece((s for d in docs for s in d), str(path),
                                          vocab_size=1000, model_type='bpe')
  return _with_pmi_vocab(tok, [[tok.encode(s) for s in d] for d in docs])


@pytest.mark.parametrize('kind', masking.KINDS)
def test_real_text(wiki, kind):
  tok, docs = wiki
  ids = _rows(docs, tok, 512, 128, seed=0)
  out = _mask(tok, ids, kind, max_predictions=40)
  _check_invariants(tok, ids, out, 40)
  if kind != 'token':
    _assert_whole_words(tok, ids, out)
  assert abs(out['weights'].sum() / (~tok.special_V[ids]).sum() - 0.15) < 0.01


def test_rejects_unknown_kind_and_bad_options():
  ids = np.array([[2, 10, 11, 3]])
  def call(**kw):
    args = dict(kind='span', rate=0.15, max_predictions=2, rng=np.random.default_rng(0),
                vocab_size=20, mask_id=4)
    masking.mask(ids, ids > 0, ids < 5, **{**args, **kw})
  with pytest.raises(UserError, match="masking kind 'spam'"):
    call(kind='spam')
  with pytest.raises(UserError, match="'pmi' needs a PMI n-gram vocabulary"):
    call(kind='pmi')
  for bad, match in [(dict(rate=1.5), 'masking rate'), (dict(span_p=0.0), 'span_p'),
                     (dict(mask_prob=0.95, random_prob=0.1), 'add up to at most 1'),
                     (dict(max_span=0), 'max_span'), (dict(max_ngram=2.5), 'max_ngram'),
                     (dict(max_predictions=5), 'max_predictions')]:
    with pytest.raises(UserError, match=match):
      call(**bad)


def test_row_streams_mask_a_row_the_same_in_any_batch():
  """The pipeline's per-row streams make a row's mask independent of its batch-mates,
  and are numpy's Philox Generators keyed per row, bit for bit (what runs drew before
  the streams were vectorised)."""
  from bertjax.data.pipeline import row_key
  rng = np.random.default_rng(5)
  ids = rng.integers(5, 200, (6, 48))
  ids[:, 0], ids[:, -1] = 2, 3
  special = (ids == 2) | (ids == 3)
  word_start = rng.random(ids.shape) < 0.6
  vocab = pmi.NgramVocab([ids[r, 1:4] for r in range(6)] + [ids[2, 9:11]], pmi.MAX_N)
  keys = [row_key(0, 7, r) for r in range(6)]
  for kind in masking.KINDS:
    kwargs = dict(kind=kind, rate=0.15, max_predictions=8, vocab_size=200, mask_id=4,
                  ngram_vocab=vocab)
    whole = masking.mask(ids, word_start, special, **kwargs, rng=philox_rows.PhiloxRows(keys))
    alone = masking.mask(ids[4:5], word_start[4:5], special[4:5], **kwargs,
                         rng=philox_rows.PhiloxRows(keys[4:5]))
    generators = [np.random.Generator(np.random.Philox(key=k)) for k in keys]
    by_generators = masking.mask(ids, word_start, special, **kwargs, rng=_RowGenerators(generators))
    for key in whole:
      np.testing.assert_array_equal(whole[key][4:5], alone[key], err_msg=f'{kind} {key}')
      np.testing.assert_array_equal(whole[key], by_generators[key], err_msg=f'{kind} {key}')


class _RowGenerators:
  """One numpy Generator a row, drawn from in turn: the reference PhiloxRows matches."""

  def __init__(self, generators):
    self.generators = generators

  def random(self, size):
    return np.stack([g.random(size[1]) for g in self.generators])

  def integers(self, low, high, size):
    return np.stack([g.integers(low, high, size=size[1]) for g in self.generators])


@pytest.mark.parametrize('draws', [
    [('random', (), 128), ('random', (), 19), ('integers', (0, 234), 19)],
    # Odd counts keep half a word for the next 32-bit draw; a span of 3 * 2**30 rejects a
    # quarter of the draws (numpy's Lemire method), moving those rows' streams.
    [('random', (), 3), ('integers', (5, 3 * 2**30 + 5), 7), ('integers', (0, 2**32), 3),
     ('random', (), 5), ('integers', (0, 1), 2), ('integers', (0, 99), 9), ('random', (), 1)]])
def test_philox_rows_are_numpys_philox_streams(draws):
  rng = np.random.default_rng(1)
  keys = [int(k) for k in rng.integers(0, 2**63, 40)] + [0, 2**128 - 1, 2**96 + 2**64 + 7]
  rows = philox_rows.PhiloxRows(keys)
  generators = [np.random.Generator(np.random.Philox(key=k)) for k in keys]
  for method, args, n in draws:
    got = getattr(rows, method)(*args, size=(len(keys), n))
    want = np.stack([getattr(g, method)(*args, size=n) for g in generators])
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want, err_msg=f'{method}{args}')
  assert bool(rows.diverged) == (len(draws) > 3)  # the replay path ran where it should


class _CoarseUniforms:
  """Uniforms on a grid of eighths: ties everywhere, to pin how they are broken."""

  def __init__(self, seed):
    self.rng = np.random.default_rng(seed)

  def random(self, size):
    return self.rng.integers(0, 8, size) / 8


def test_token_choice_is_the_k_smallest_scores_ties_to_the_earlier_position():
  candidate = np.random.default_rng(0).random((64, 40)) < 0.8
  candidate[0] = False  # a row with nothing to choose
  k = np.where(candidate.sum(1) > 0, np.random.default_rng(1).integers(1, 12, 64), 0)
  k = np.minimum(k, candidate.sum(1))
  chosen = masking._choose_tokens(candidate, k, _CoarseUniforms(2))
  scores = np.where(candidate, _CoarseUniforms(2).random(candidate.shape), 2.0)
  order = np.argsort(scores, axis=1, kind='stable')  # the definition: a stable sort
  want = np.zeros_like(candidate)
  for row in range(64):
    want[row, order[row, :k[row]]] = True
  np.testing.assert_array_equal(chosen, want)
