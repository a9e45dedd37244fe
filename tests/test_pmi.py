"""PMI n-gram vocabularies (data/pmi.py, `bertjax data pmi`) and PMI masking's units."""
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from bertjax.data import masking, pmi, tokenizer as tokenizer_lib
from bertjax.data.wordpiece import WordPieceTokenizer
from bertjax.errors import UserError

FILLER = ('the a of and to in is was for on with as by at from it he she they we '
          'red blue green old young small large river house road book tree stone').split()
PLANTED = ('new york city', 'ice cream', 'prime minister', 'united states of america')


def _tokenizer(tmp_path, name='vocab.txt', extra=()):
  words = sorted({w for p in PLANTED for w in p.split()} | set(FILLER)) + list(extra)
  path = tmp_path / name
  path.write_text('\n'.join(list(tokenizer_lib.SPECIAL_TOKENS) + words + ['##s', '.']) + '\n',
                  encoding='utf-8')
  return WordPieceTokenizer(str(path))


def _corpus(seed=0, sentences=3000):
  """Filler words at random, and the planted collocations, whose words also occur
  alone (so that a frequent word is not mistaken for a collocation)."""
  rng = random.Random(seed)
  parts = [w for p in PLANTED for w in p.split()]
  out = []
  for _ in range(sentences):
    words = []
    for _ in range(rng.randint(6, 14)):
      u = rng.random()
      words.append(rng.choice(PLANTED) if u < 0.08 else rng.choice(parts) if u < 0.12
                   else rng.choice(FILLER))
    out.append(' '.join(words) + ' .')
  return out


def test_pmi_n_on_hand_counts():
  """PMI_3(abc) = log p(abc) - max(log p(a)p(b)p(c), log p(ab)p(c), log p(a)p(bc))."""
  a, b, c = (1,), (2,), (3,)
  counts = {(a,): 10, (b,): 10, (c,): 20, (a, b): 8, (b, c): 2, (a, b, c): 2}
  scores = pmi.pmi_scores(counts, min_count=1)
  uni, bi, tri = 40, 10, 2
  p = lambda n, total: math.log(n / total)
  assert scores[(a, b)] == pytest.approx(p(8, bi) - p(10, uni) - p(10, uni))
  best = max(p(10, uni) + p(10, uni) + p(20, uni), p(8, bi) + p(20, uni),
             p(10, uni) + p(2, bi))
  assert scores[(a, b, c)] == pytest.approx(p(2, tri) - best)
  assert (a, b) not in pmi.pmi_scores(counts, min_count=9)


def test_build_finds_planted_collocations(tmp_path):
  tok = _tokenizer(tmp_path)
  ngrams = pmi.build((tok.encode(s) for s in _corpus()), tok, min_count=5, size=40)
  texts = [g['text'] for g in ngrams]
  # The planted collocations (and n-grams inside them) outrank every n-gram of filler
  # words, which co-occur by chance only.
  last = max(texts.index(p) for p in PLANTED)
  planted_words = {w for p in PLANTED for w in p.split()}
  assert all(set(t.split()) <= planted_words for t in texts[:last + 1]), texts[:last + 1]
  assert any(not set(t.split()) <= planted_words for t in texts[last + 1:])
  assert all(2 <= g['words'] <= 5 and g['count'] >= 5 for g in ngrams)
  assert [g['pmi'] for g in ngrams] == sorted((g['pmi'] for g in ngrams), reverse=True)


def test_segment_takes_the_longest_vocabulary_ngram():
  vocab = pmi.NgramVocab([(10, 11), (10, 11, 12), (13, 14)], max_n=5)
  # Words: 10 | 11 | 12 | 13 | 14 (one piece each), one segment.
  ids, first, size = [10, 11, 12, 13, 14], [0, 1, 2, 3, 4], [1] * 5
  assert vocab.segment(ids, first, size, [5, 4, 3, 2, 1]) == [(0, 3, 3), (3, 2, 2)]
  # A segment end after 11: the 3-gram would cross it, the 2-gram does not.
  assert vocab.segment(ids, first, size, [2, 1, 3, 2, 1]) == [(0, 2, 2), (2, 1, 1),
                                                             (3, 2, 2)]


def test_pmi_masking_never_splits_a_unit_and_masks_ngrams(tmp_path):
  tok = _tokenizer(tmp_path)
  sentences = [tok.encode(s) for s in _corpus(seed=1)]
  ngrams = pmi.build(iter(sentences), tok, min_count=5, size=40)
  vocab = pmi.NgramVocab([g['ids'] for g in ngrams], pmi.MAX_N)
  length, batch = 64, 512
  ids = np.full((batch, length), tok.pad_id)
  rng = np.random.default_rng(0)
  for b in range(batch):
    row = [tok.cls_id]
    while len(row) < length - 1:
      row += sentences[rng.integers(len(sentences))]
    ids[b, :length - 1], ids[b, -1] = row[:length - 1], tok.sep_id
  special = tok.special_V[ids]
  out = masking.mask(ids, tok.word_start_V[ids], special, kind='pmi', rate=0.15,
                     max_predictions=20, rng=rng, vocab_size=tok.vocab_size,
                     mask_id=tok.mask_id, ngram_vocab=vocab)
  chosen = np.zeros(ids.shape, bool)
  w = out['weights'] > 0
  chosen[np.nonzero(w)[0], out['positions'][w]] = True
  multi = 0
  for b in range(batch):
    # One segment of one-piece words between [CLS] and [SEP].
    n = length - 2
    for start, words, tokens in vocab.segment(ids[b].tolist(), list(range(1, n + 1)), [1] * n,
                                              list(range(n, 0, -1))):
      hit = chosen[b, 1 + start:1 + start + tokens]
      assert hit.all() or not hit.any(), f'row {b} splits a unit'
      multi += words > 1 and hit.all()
  assert multi > batch // 2  # collocations are masked as units, often
  assert abs(w.sum() / (~special).sum() - 0.15) < 0.01


def test_vocabulary_file_round_trip_and_foreign_tokenizer(tmp_path):
  tok = _tokenizer(tmp_path)
  ngrams = pmi.build((tok.encode(s) for s in _corpus()), tok, min_count=5, size=10)
  path = str(tmp_path / 'pmi.json')
  pmi.save(path, ngrams, tok, min_count=5, max_n=5, corpus='synthetic')
  vocab = pmi.load(path, tok)
  assert len(vocab) == 10 and tuple(ngrams[0]['ids']) in vocab.ngrams
  other = _tokenizer(tmp_path, 'other.txt', extra=('zebra',))
  with pytest.raises(UserError, match=r'pmi\.json was built with another tokenizer .*'
                                      r'build it again with `bertjax data pmi'):
    pmi.load(path, other)
  with pytest.raises(UserError, match=r'cannot be read \(No such file or directory\); build it '
                                      'with `bertjax data pmi'):
    pmi.load(str(tmp_path / 'missing.json'), tok)
  with pytest.raises(UserError, match='masking kind pmi needs a PMI vocabulary'):
    pmi.load('', tok)  # kind=pmi with data.masking.pmi_vocab unset
  with pytest.raises(UserError, match='--max_n 6'):
    pmi.build([], tok, min_count=1, size=1, max_n=6)


def test_data_pmi_command(tmp_path):
  tok = _tokenizer(tmp_path)
  tok_dir = tmp_path / 'tok'
  tokenizer_lib.save(tok, str(tok_dir))
  text = tmp_path / 'corpus.txt'
  text.write_text('\n\n'.join('\n'.join(_corpus(seed=s, sentences=300)) for s in range(5)),
                  encoding='utf-8')
  out = tmp_path / 'pmi.json'
  run = subprocess.run([sys.executable, '-m', 'bertjax', 'data', 'pmi', '--corpus', str(text),
                        '--tokenizer', str(tok_dir), '--out', str(out), '--min_count', '5',
                        '--size', '20'], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert 'data.masking.pmi_vocab=' in run.stdout
  record = json.loads(out.read_text(encoding='utf-8'))
  assert len(record['ngrams']) == 20 and record['tokenizer']['fingerprint']
  assert 'ice cream' in [g['text'] for g in record['ngrams']]
