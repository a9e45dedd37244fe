"""Token classification (named-entity recognition such as CoNLL-2003): one tag a word.

Data: a CoNLL file (a token a line, the token in the first column and its tag in the
last, blank lines between sentences, `-DOCSTART-` lines skipped) or a tfds dataset
with a `tokens` and a `ner` sequence feature (`tfds:conll2003:train`).

Each word is tokenized on its own; its first piece carries the word's tag and the
others IGNORE (or, with `label_all_subwords`, the tag too, B-X turned into I-X as
`transformers`' run_ner does). A sentence longer than a row is cut between words into
several rows, so every word is predicted once and the F1 scores every word.

The metric is entity-level precision/recall/F1 as seqeval's default mode and
conlleval count them: chunks from IOB1, IOB2 or IOBES tags, an entity counted when
its type and span both match.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from bertjax import storage
from bertjax.errors import UserError
from bertjax.tasks import common

MODEL_KIND = 'token_classification'
DEFAULT_METRIC = 'f1'
TOKENS_FIELD, TAGS_FIELD = 'tokens', 'ner'  # the tfds features read


def task_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind='tag',
      # CoNLL files or tfds specs, e.g. 'tfds:conll2003:train' and 'tfds:conll2003:dev'.
      train='',
      eval='',
      # Tag names in id order; empty: the tfds ClassLabel names, or the training
      # file's tags sorted with 'O' first.
      labels=(),
      metric=DEFAULT_METRIC,
      # Also train on the non-first pieces of a word (predictions use the first).
      label_all_subwords=False,
  ))


@dataclasses.dataclass
class _Sentence:
  words: list[str]
  tags: list[str]
  places: list[str]  # where each word is, for error messages


@dataclasses.dataclass
class WordMap:
  """Maps rows back to words, so predictions are scored per word of each sentence."""
  sentence_N: np.ndarray  # the sentence of each row
  word_NL: np.ndarray     # the word index at each word's first piece, -1 elsewhere
  gold: list[list[str]]   # the gold tags of each sentence


def _read_conll(path: str) -> list[_Sentence]:
  from bertjax.data import text_files
  if not storage.as_path(path).is_file():  # local or a URL (gs://)
    raise UserError(f'tagging data {path!r} not found; point config.task.train/eval at a '
                    'CoNLL file or a tfds spec such as tfds:conll2003:train')
  sentences, current = [], _Sentence([], [], [])
  for n, line in enumerate(text_files.read_text(path).splitlines(), 1):
    columns = line.split()
    if not columns or columns[0] == '-DOCSTART-':
      if current.words:
        sentences.append(current)
        current = _Sentence([], [], [])
      continue
    if len(columns) < 2:
      raise UserError(f'{path}, line {n}: {line.strip()!r} has no tag; each line needs the '
                      'token first and its tag last (e.g. "Paris NNP B-LOC"), with blank '
                      'lines between sentences')
    current.words.append(columns[0])
    current.tags.append(columns[-1])
    current.places.append(f'{path}, line {n}')
  if current.words:
    sentences.append(current)
  return sentences


def _read_tfds(spec: str, default_split: str) -> tuple[list[_Sentence], list[str]]:
  """The sentences of a tfds split and its tag names (the ClassLabel's, in id order)."""
  from tensorflow_datasets import features as tfds_features

  from bertjax.data import tfds_source
  _, features, name, split = tfds_source.open_tfds(spec, default_split)
  tags = features[TAGS_FIELD] if TAGS_FIELD in features else None
  if (TOKENS_FIELD not in features
      or not isinstance(getattr(tags, 'feature', None), tfds_features.ClassLabel)):
    raise UserError(f'tfds dataset {name!r} needs a {TOKENS_FIELD!r} sequence of words and '
                    f'a {TAGS_FIELD!r} sequence of ClassLabel tags (as conll2003); it has '
                    f'{sorted(features)}')
  names = list(tags.feature.names)
  sentences = []
  for i, example in enumerate(tfds_source.tfds_examples(spec, default_split)):
    words = [w.decode('utf-8') if isinstance(w, bytes) else str(w)
             for w in example[TOKENS_FIELD]]
    if words:
      sentences.append(_Sentence(words, [names[t] for t in example[TAGS_FIELD]],
                                 [f'tfds:{name}:{split}, example {i}'] * len(words)))
  return sentences, names


def _inside_ids(label_names: Sequence[str]) -> list[int]:
  """The id a word's later pieces take with label_all_subwords: I-X for B-X."""
  ids = []
  for i, name in enumerate(label_names):
    inside = 'I-' + name[2:] if name.startswith('B-') else name
    ids.append(label_names.index(inside) if inside in label_names else i)
  return ids


def load_split(task_cfg, split: str, tok, seq_len: int,
               label_names: Sequence[str] | None = None) -> common.Split:
  """Rows of [CLS] pieces [SEP] with `labels` at each word's first piece; `meta` is a
  WordMap, so `compute_metrics` scores words. A tfds spec without a split reads
  'train' for train and 'dev' (conll2003's name) for eval."""
  source = task_cfg.train if split == 'train' else task_cfg.eval
  if not source:
    raise UserError(f'config.task.{split} is not set; point it at a CoNLL file (a token a '
                    'line, its tag last) or a tfds spec such as '
                    f'tfds:conll2003:{"train" if split == "train" else "dev"}')
  if seq_len < 3:
    raise UserError(f'seq_len {seq_len} leaves no room for a word between [CLS] and [SEP]')
  if source.startswith('tfds:'):
    sentences, tfds_names = _read_tfds(source[len('tfds:'):],
                                       'train' if split == 'train' else 'dev')
  else:
    sentences, tfds_names = _read_conll(source), None
  if not sentences:
    raise UserError(f'{source} holds no tagged sentence')

  configured = label_names is None and bool(task_cfg.labels)
  if label_names is None:
    label_names = (task_cfg.labels or tfds_names
                   or sorted({t for s in sentences for t in s.tags}, key=lambda t: (t != 'O', t)))
  label_names = tuple(label_names)
  tag_ids = {}
  for s in sentences:
    for tag, place in zip(s.tags, s.places):
      if tag in tag_ids:
        continue
      if configured and tag not in label_names:
        raise UserError(f'{place}: tag {tag!r} is not in config.task.labels '
                        f'{list(label_names)}; add it there, or leave labels empty to take '
                        'them from the training data')
      tag_ids[tag] = common.check_labels(label_names, tag, place)

  pieces_of: dict[str, list[int]] = {}
  inside = _inside_ids(label_names)
  budget = seq_len - 2
  rows, labels, words, row_sentence = [], [], [], []

  def flush(s, row_ids, row_labels, row_words):
    rows.append(([tok.cls_id, *row_ids, tok.sep_id], [0] * (len(row_ids) + 2)))
    labels.append([common.IGNORE, *row_labels, common.IGNORE])
    words.append([-1, *row_words, -1])
    row_sentence.append(s)

  for s, sentence in enumerate(sentences):
    row_ids, row_labels, row_words = [], [], []
    for w, (word, tag) in enumerate(zip(sentence.words, sentence.tags)):
      if word not in pieces_of:
        pieces_of[word] = (tok.encode(word) or [tok.unk_id])[:budget]
      pieces = pieces_of[word]
      if len(row_ids) + len(pieces) > budget:
        flush(s, row_ids, row_labels, row_words)
        row_ids, row_labels, row_words = [], [], []
      label = tag_ids[tag]
      rest = inside[label] if task_cfg.label_all_subwords else common.IGNORE
      row_ids += pieces
      row_labels += [label] + [rest] * (len(pieces) - 1)
      row_words += [w] + [-1] * (len(pieces) - 1)
    flush(s, row_ids, row_labels, row_words)

  features = common.pad_rows(rows, seq_len, tok.pad_id)
  features['labels'] = np.full((len(rows), seq_len), common.IGNORE, np.int32)
  word_NL = np.full((len(rows), seq_len), -1, np.int32)
  for i, (row_labels, row_words) in enumerate(zip(labels, words)):
    features['labels'][i, :len(row_labels)] = row_labels
    word_NL[i, :len(row_words)] = row_words
  meta = WordMap(np.array(row_sentence, np.int32), word_NL, [s.tags for s in sentences])
  return common.Split(features, meta, label_names, source)


def batch_count(batch):
  """The loss's denominator: the labelled pieces of the whole batch."""
  return (batch['labels'] != common.IGNORE).sum().astype(jnp.float32)


def logits(model, batch, rngs=None):
  return model(batch['input_ids'], batch['token_type_ids'], batch['attention_mask'],
               rngs=rngs)


def batch_sums(model, batch, rngs=None):
  return sums_from_logits(batch, logits(model, batch, rngs))


def sums_from_logits(batch, logits_BLC):
  """Cross-entropy summed over labelled pieces (count: how many)."""
  labels_N = batch['labels'].reshape(-1)
  sums = common.classification_sums(logits_BLC.reshape(-1, logits_BLC.shape[-1]), labels_N,
                                    (labels_N != common.IGNORE).astype(jnp.float32))
  return dict(sums, tokens=(batch['attention_mask'] > 0).sum().astype(jnp.float32))


def soft_targets(batch, logits_BLC):
  """One distribution per labelled piece, the pieces the hard loss counts."""
  return (logits_BLC,), (batch['labels'] != common.IGNORE).astype(jnp.float32)


def train_metrics(sums):
  count = jnp.maximum(sums['count'], 1.0)
  return dict(loss=sums['loss_sum'] / count, accuracy=sums['correct'] / count)


def predict(model, batch):
  """The argmax tag id of every piece; `compute_metrics` reads the first pieces."""
  return dict(predictions=logits(model, batch).argmax(-1).astype(jnp.int32))


def _split_tag(tag: str) -> tuple[str, str]:
  """(prefix, type): 'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); a bare 'PER' (IO
  tags) -> ('I', 'PER')."""
  if tag == 'O':
    return 'O', ''
  prefix, dash, kind = tag.partition('-')
  return (prefix, kind) if dash else ('I', tag)


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """The (type, first, last) chunks of one sentence's tags, by conlleval's rules: an
  I-X after O or after another type starts a chunk (IOB1), as B-X and S-X do."""
  chunks = []
  prev, prev_kind, start = 'O', '', 0
  for i, tag in enumerate([*tags, 'O']):
    cur, kind = _split_tag(tag)
    if (prev in ('E', 'S') or (prev in ('B', 'I') and cur in ('B', 'S', 'O'))
        or (prev != 'O' and prev_kind != kind)):
      chunks.append((prev_kind, start, i - 1))
    if (cur in ('B', 'S') or (prev in ('E', 'S', 'O') and cur in ('E', 'I'))
        or (cur != 'O' and prev_kind != kind)):
      start = i
    prev, prev_kind = cur, kind
  return chunks


def entity_f1(gold_sentences: Sequence[Sequence[str]],
              pred_sentences: Sequence[Sequence[str]]) -> dict[str, float]:
  """Micro-averaged entity precision, recall and F1 (0-1) over sentences of tags, as
  seqeval's default mode and conlleval compute them."""
  if len(gold_sentences) != len(pred_sentences):
    raise ValueError(f'{len(gold_sentences)} gold sentences but {len(pred_sentences)} '
                     'predicted')
  correct = n_gold = n_pred = 0
  for gold, pred in zip(gold_sentences, pred_sentences):
    if len(gold) != len(pred):
      raise ValueError(f'a sentence has {len(gold)} gold tags but {len(pred)} predicted')
    gold_chunks, pred_chunks = set(entities(gold)), set(entities(pred))
    correct += len(gold_chunks & pred_chunks)
    n_gold += len(gold_chunks)
    n_pred += len(pred_chunks)
  precision = correct / n_pred if n_pred else 0.0
  recall = correct / n_gold if n_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return dict(precision=precision, recall=recall, f1=f1)


def compute_metrics(outputs, split: common.Split) -> dict[str, float]:
  """Entity precision/recall/F1 and word accuracy over every word of the split."""
  words: WordMap = split.meta
  predictions_NL = np.asarray(outputs['predictions'])
  pred = [[''] * len(tags) for tags in words.gold]
  rows, cols = np.nonzero(words.word_NL >= 0)
  for r, c in zip(rows, cols):
    pred[words.sentence_N[r]][words.word_NL[r, c]] = split.label_names[predictions_NL[r, c]]
  n_words = sum(len(tags) for tags in words.gold)
  right = sum(g == p for gold, guess in zip(words.gold, pred) for g, p in zip(gold, guess))
  return dict(entity_f1(words.gold, pred), accuracy=right / n_words)
