"""Extractive question answering (SQuAD v1.1 and v2.0): the answer is a span of the context.

Data: a SQuAD JSON file (data[].paragraphs[].context and qas[].id/question/answers
[{text, answer_start}]/is_impossible) or a prepared tfds split
(`tfds:squad/v1.1:train`, `tfds:squad/v2.0:validation`).

Features are built as Google's BERT run_squad builds them, so scores compare with
its published ones: the context is split on whitespace into words, each word is
tokenized on its own (any `Tokenizer`: SentencePiece or WordPiece), the answer's
word span is tightened to the answer text's own pieces where they lie inside it
('1895' in '(1895).'), and a context longer than a row is cut into windows every
`doc_stride` pieces, each row [CLS] question [SEP] window [SEP]. A window that does
not hold the whole answer (and every window of an unanswerable question) targets
[CLS] at position 0.

Decoding follows run_squad too: the `n_best` top starts and ends of each window,
spans inside the context, at most `max_answer_length` pieces long, starting where
the window gives the piece its most context; the best over all windows of a
question. Its text is the part of the original words the pieces cover, so case and
punctuation come from the context. With `version_2` the question is unanswerable
when the [CLS] score (lowest over its windows) beats the best span's score by more
than `null_score_threshold`. Exact match and F1 are the official evaluate scripts'
(v1.1, or v2.0 with its HasAns_/NoAns_ breakdown).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from typing import Any, Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bertjax import storage
from bertjax.data import tfds_source
from bertjax.errors import UserError
from bertjax.tasks import common

MODEL_KIND = 'question_answering'
DEFAULT_METRIC = 'f1'
_MASKED = -1e9  # the logit of padding positions, which no span may start or end at
_PUNCTUATION = frozenset(string.punctuation)  # what normalize_answer drops
_SQUAD_LAYOUT = 'data[].paragraphs[].context/qas[].id/question/answers[].text/answer_start'


def task_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      kind='qa',
      # SQuAD JSON paths or tfds specs, e.g. 'tfds:squad/v1.1:train' and
      # 'tfds:squad/v2.0:validation'.
      train='',
      eval='',
      version_2=False,  # questions may have no answer (SQuAD v2.0)
      doc_stride=128,  # pieces between the starts of a long context's windows
      max_query_length=64,  # question pieces kept
      n_best=20,  # top starts and ends tried per window
      max_answer_length=30,  # pieces
      null_score_threshold=0.0,  # v2: answer '' when null score - best span score > this
      metric=DEFAULT_METRIC,
  ))


@dataclasses.dataclass
class Context:
  """A context split as run_squad splits it: whitespace words, each tokenized alone."""
  words: list[str]
  char_word: list[int]   # the word of each character (whitespace: the word before it)
  doc_ids: list[int]     # the pieces of all words
  doc_word: list[int]    # the word of each piece
  word_start: list[int]  # each word's first piece, then len(doc_ids)


@dataclasses.dataclass
class Example:
  id: str
  question: str
  context: Context
  answers: list[str]  # the gold texts; empty when unanswerable
  start_piece: int    # the first answer's pieces in doc_ids; -1 when there is none
  end_piece: int


@dataclasses.dataclass
class Meta:
  """What decoding needs on the host, per row (F) of `features`."""
  examples: list[Example]
  example_F: np.ndarray         # the example of each row
  token_to_word_FL: np.ndarray  # each position's context word, -1 off the context
  max_context_FL: np.ndarray    # the row is the piece's window with the most context
  doc_offset_F: np.ndarray      # a context position plus this is its index in doc_ids
  tok: Any                      # decodes pieces to cut the answer out of its words
  version_2: bool
  n_best: int
  max_answer_length: int
  null_score_threshold: float


def _is_whitespace(c: str) -> bool:
  """run_squad's rule (narrow no-break space too; not every Unicode space)."""
  return c in ' \t\r\n' or ord(c) == 0x202F


def split_context(text: str, tok) -> Context:
  """Words and pieces of a context, with the maps between them and its characters."""
  words, char_word, after_space = [], [], True
  for c in text:
    if _is_whitespace(c):
      after_space = True
    else:
      if after_space:
        words.append(c)
      else:
        words[-1] += c
      after_space = False
    char_word.append(len(words) - 1)
  doc_ids, doc_word, word_start = [], [], []
  for i, word in enumerate(words):
    word_start.append(len(doc_ids))
    pieces = tok.encode(word)
    doc_ids.extend(pieces)
    doc_word.extend([i] * len(pieces))
  word_start.append(len(doc_ids))
  return Context(words, char_word, doc_ids, doc_word, word_start)


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _field(d, key: str, where: str):
  if not isinstance(d, dict) or key not in d:
    raise UserError(f'{where} has no {key!r} key; SQuAD JSON is laid out as {_SQUAD_LAYOUT}')
  return d[key]


def _json_records(path: str) -> Iterator[tuple]:
  """(where, id, question, context, [(text, answer_start)], is_impossible) per question."""
  try:
    data = json.loads(storage.as_path(path).read_text(encoding='utf-8'))  # local or gs://
  except OSError as e:
    raise UserError(f'cannot read {path} ({e.strerror or e}); give a SQuAD JSON file or a '
                    'tfds spec such as tfds:squad/v1.1:train') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{path} is not UTF-8 JSON ({e}); give a SQuAD JSON file') from None
  for article in _field(data, 'data', path):
    for paragraph in _field(article, 'paragraphs', path):
      context = _field(paragraph, 'context', path)
      for qa in _field(paragraph, 'qas', path):
        qid = str(_field(qa, 'id', path))
        where = f'{path}: question {qid!r}'
        answers = [(_field(a, 'text', where), _field(a, 'answer_start', where))
                   for a in _field(qa, 'answers', where)]
        yield (where, qid, _field(qa, 'question', where), context, answers,
               bool(qa.get('is_impossible', False)))


def _tfds_records(spec: str, split: str) -> Iterator[tuple]:
  default_split = 'train' if split == 'train' else 'validation'
  for example in tfds_source.tfds_examples(spec[len('tfds:'):], default_split):
    qid, answers = _text(example['id']), example['answers']
    yield (f'{spec}: question {qid!r}', qid, _text(example['question']),
           _text(example['context']),
           [(_text(t), int(s)) for t, s in zip(answers['text'], answers['answer_start'])],
           bool(example.get('is_impossible', False)))


def _answer_pieces(ctx: Context, context: str, text, start, tok) -> tuple[int, int] | None:
  """The pieces of an answer found at its offset, tightened to the answer's own pieces
  (run_squad's _improve_answer_span); None when the text is not at that offset."""
  if (not isinstance(text, str) or not isinstance(start, int) or not text.strip()
      or not 0 <= start <= len(context) - len(text) or context[start:start + len(text)] != text):
    return None
  first_char = start + len(text) - len(text.lstrip())
  last_char = start + len(text.rstrip()) - 1
  first = ctx.word_start[ctx.char_word[first_char]]
  last = ctx.word_start[ctx.char_word[last_char] + 1] - 1
  if last < first:  # the answer's words have no pieces
    return None
  answer_ids = tok.encode(text)
  n = len(answer_ids)
  for s in range(first, last - n + 2):
    if ctx.doc_ids[s:s + n] == answer_ids:
      return s, s + n - 1
  return first, last


def read_examples(source: str, split: str, tok, version_2: bool) -> list[Example]:
  """The questions of a SQuAD JSON file or tfds split; in the train split an answer must
  be at its offset in the context."""
  records = (_tfds_records(source, split) if source.startswith('tfds:')
             else _json_records(source))
  examples, last_text, ctx = [], None, None
  for where, qid, question, context, answers, is_impossible in records:
    if context != last_text:  # a paragraph's questions share its tokenized context
      last_text, ctx = context, split_context(context, tok)
    if is_impossible or not answers:
      if not version_2:
        raise UserError(f'{where} has no answer; SQuAD v1.1 questions all have one: set '
                        'task.version_2=True to train and score unanswerable questions '
                        '(SQuAD v2.0)')
      examples.append(Example(qid, question, ctx, [], -1, -1))
      continue
    span = _answer_pieces(ctx, context, *answers[0], tok)
    if span is None and split == 'train':
      text, start = answers[0]
      raise UserError(f'{where}: answer {text!r} is not at answer_start {start!r} of its '
                      'context; fix answer_start to the offset of the answer text in the '
                      'context (in characters)')
    examples.append(Example(qid, question, ctx, [_text(t) for t, _ in answers],
                            *(span or (-1, -1))))
  return examples


def windows(num_pieces: int, size: int, stride: int) -> list[tuple[int, int]]:
  """(start, length) of run_squad's doc spans: `size` pieces every `stride`, the last
  one ending at the context's end."""
  spans, start = [], 0
  while start < num_pieces:
    length = min(num_pieces - start, size)
    spans.append((start, length))
    if start + length == num_pieces:
      break
    start += min(length, stride)
  return spans


def _best_windows(spans, num_pieces: int) -> np.ndarray:
  """For each piece the window where it has the most context on its nearer side
  (run_squad's _check_is_max_context; the first such window on ties)."""
  score_SD = np.full((len(spans), num_pieces), -np.inf)
  for k, (start, length) in enumerate(spans):
    d = np.arange(start, start + length)
    score_SD[k, d] = np.minimum(d - start, start + length - 1 - d) + 0.01 * length
  return score_SD.argmax(0)


def load_split(task_cfg, split: str, tok, seq_len: int, label_names=None) -> common.Split:
  del label_names  # spans have no label names
  source = task_cfg[split]
  if not source:
    raise UserError(f'task.{split} is empty: set --config.task.{split}=PATH.json (SQuAD '
                    f'JSON) or tfds:squad/v1.1:{"train" if split == "train" else "validation"}')
  max_query = task_cfg.max_query_length
  if seq_len - max_query - 3 < 1:
    raise UserError(f'seq_len {seq_len} leaves no room for the context after a question of '
                    f'task.max_query_length={max_query} pieces; raise seq_len or lower '
                    'task.max_query_length')
  if task_cfg.doc_stride < 1:
    raise UserError(f'task.doc_stride must be at least 1, got {task_cfg.doc_stride}')
  examples = read_examples(source, split, tok, task_cfg.version_2)
  rows, starts, ends, example_F, token_to_word, max_context, doc_offset = ([] for _ in range(7))
  for i, ex in enumerate(examples):
    query = tok.encode(ex.question)[:max_query]
    ctx, context_start = ex.context, len(query) + 2
    spans = windows(len(ctx.doc_ids), seq_len - len(query) - 3, task_cfg.doc_stride)
    best = _best_windows(spans, len(ctx.doc_ids))
    for k, (start, length) in enumerate(spans):
      end = start + length
      rows.append(([tok.cls_id, *query, tok.sep_id, *ctx.doc_ids[start:end], tok.sep_id],
                   [0] * context_start + [1] * (length + 1)))
      inside = start <= ex.start_piece and ex.end_piece < end
      offset = context_start - start
      starts.append(ex.start_piece + offset if inside else 0)
      ends.append(ex.end_piece + offset if inside else 0)
      example_F.append(i)
      words_L = np.full(seq_len, -1, np.int32)
      words_L[context_start:context_start + length] = ctx.doc_word[start:end]
      token_to_word.append(words_L)
      max_context_L = np.zeros(seq_len, bool)
      max_context_L[context_start:context_start + length] = best[start:end] == k
      max_context.append(max_context_L)
      doc_offset.append(-offset)
  if not rows:
    raise UserError(f'{source} holds no questions with a non-empty context')
  features = common.pad_rows(rows, seq_len, tok.pad_id)
  features['start_positions'] = np.array(starts, np.int32)
  features['end_positions'] = np.array(ends, np.int32)
  meta = Meta(examples, np.array(example_F, np.int32), np.stack(token_to_word),
              np.stack(max_context), np.array(doc_offset, np.int32), tok,
              bool(task_cfg.version_2), int(task_cfg.n_best), int(task_cfg.max_answer_length),
              float(task_cfg.null_score_threshold))
  return common.Split(features, meta=meta, source=source)


def logits(model, batch, rngs=None):
  return model(batch['input_ids'], batch['token_type_ids'], batch['attention_mask'],
               rngs=rngs)


def batch_count(batch):
  """The loss's denominator: the rows with tokens (rows of batch padding have none)."""
  return (batch['attention_mask'] > 0).any(-1).sum().astype(jnp.float32)


def batch_sums(model, batch, rngs=None):
  return sums_from_logits(batch, logits(model, batch, rngs))


def sums_from_logits(batch, start_end_logits):
  """Per row the mean of the start and end cross-entropies over its tokens, summed over
  the rows `batch_count` counts."""
  mask_BL = batch['attention_mask'] > 0
  sums = dict(loss_sum=jnp.float32(0), count=batch_count(batch),
              tokens=mask_BL.sum().astype(jnp.float32))
  (start_BL, end_BL), weights_B = soft_targets(batch, start_end_logits)
  for name, logits_BL in (('start', start_BL), ('end', end_BL)):
    target_B = batch[f'{name}_positions']
    xent_B = optax.softmax_cross_entropy_with_integer_labels(logits_BL, target_B)
    sums['loss_sum'] += (xent_B * weights_B).sum() / 2
    sums[f'{name}_correct'] = ((logits_BL.argmax(-1) == target_B) * weights_B).sum()
  return sums


def soft_targets(batch, start_end_logits):
  """The start and the end distributions of each row with tokens, over its tokens."""
  mask_BL = batch['attention_mask'] > 0
  masked = tuple(jnp.where(mask_BL, x_BL, _MASKED) for x_BL in start_end_logits)
  return masked, mask_BL.any(-1).astype(jnp.float32)


def train_metrics(sums) -> dict:
  count = jnp.maximum(sums['count'], 1.0)
  return dict(loss=sums['loss_sum'] / count, start_accuracy=sums['start_correct'] / count,
              end_accuracy=sums['end_correct'] / count)


def predict(model, batch) -> dict:
  start_BL, end_BL = logits(model, batch)
  return dict(start_logits=start_BL, end_logits=end_BL)


def _best_span(start_L, end_L, meta: Meta, f: int) -> tuple[float, int, int] | None:
  """(score, start, end) of a row's best span among its n_best starts x ends."""
  in_context_L = meta.token_to_word_FL[f] >= 0
  s_N = np.argsort(-start_L, kind='stable')[:meta.n_best]
  e_N = np.argsort(-end_L, kind='stable')[:meta.n_best]
  length_NN = e_N[None, :] - s_N[:, None] + 1
  ok_NN = ((in_context_L[s_N] & meta.max_context_FL[f, s_N])[:, None] & in_context_L[e_N][None]
           & (length_NN >= 1) & (length_NN <= meta.max_answer_length))
  if not ok_NN.any():
    return None
  score_NN = np.where(ok_NN, start_L[s_N][:, None] + end_L[e_N][None], -np.inf)
  i, j = np.unravel_index(np.argmax(score_NN), score_NN.shape)  # the first on ties
  return float(score_NN[i, j]), int(s_N[i]), int(e_N[j])


def _span_text(ctx: Context, first: int, last: int, tok) -> str:
  """The characters of the words that pieces first..last cover, cut to the pieces' own
  characters when decoding the words' pieces gives as many non-space characters as the
  words have (run_squad's get_final_text); else the whole words."""
  w0, w1 = ctx.doc_word[first], ctx.doc_word[last]
  words = ' '.join(ctx.words[w0:w1 + 1])
  word_first = ctx.word_start[w0]

  def chars(end):  # non-space characters decoded from the words' pieces before `end`
    return sum(not c.isspace() for c in tok.decode(ctx.doc_ids[word_first:end]))

  kept = [i for i, c in enumerate(words) if not c.isspace()]
  a, b = chars(first), chars(last + 1)
  if chars(ctx.word_start[w1 + 1]) != len(kept) or a >= b:
    return words
  return words[kept[a]:kept[b - 1] + 1]


def decode_predictions(outputs, split: common.Split) -> dict[str, str]:
  """The answer text of each question from `predict`'s logits over all rows."""
  meta: Meta = split.meta
  start_FL = np.asarray(outputs['start_logits'], np.float64)
  end_FL = np.asarray(outputs['end_logits'], np.float64)
  best, null = {}, {}
  for f, i in enumerate(meta.example_F):
    span = _best_span(start_FL[f], end_FL[f], meta, f)
    if span is not None and (i not in best or span[0] > best[i][0]):
      best[i] = (span[0], span[1] + meta.doc_offset_F[f], span[2] + meta.doc_offset_F[f])
    null[i] = min(null.get(i, np.inf), start_FL[f, 0] + end_FL[f, 0])
  predictions = {}
  for i, ex in enumerate(meta.examples):
    if i not in best or (meta.version_2
                         and null[i] - best[i][0] > meta.null_score_threshold):
      predictions[ex.id] = ''
    else:
      predictions[ex.id] = _span_text(ex.context, best[i][1], best[i][2], meta.tok)
  return predictions


def compute_metrics(outputs, split: common.Split) -> dict[str, float]:
  meta: Meta = split.meta
  return squad_scores(decode_predictions(outputs, split),
                      {ex.id: ex.answers for ex in meta.examples}, version_2=meta.version_2)


def normalize_answer(s: str) -> str:
  """The official scripts' normalization: lower case, no punctuation, no articles,
  single spaces."""
  s = ''.join(c for c in s.lower() if c not in _PUNCTUATION)
  return ' '.join(re.sub(r'\b(a|an|the)\b', ' ', s).split())


def exact_match_score(prediction: str, gold: str) -> bool:
  return normalize_answer(prediction) == normalize_answer(gold)


def f1_score(prediction: str, gold: str, version_2: bool = False) -> float:
  """Word-overlap F1 of the normalized answers; v2.0 scores two empty answers 1 and an
  empty against a non-empty one 0 (v1.1 scores both 0)."""
  pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
  if version_2 and not (pred and true):
    return float(pred == true)
  same = sum((collections.Counter(pred) & collections.Counter(true)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(true)
  return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], gold: dict[str, list[str]],
                 version_2: bool = False) -> dict[str, float]:
  """Exact match and F1 (percent) as the official evaluate-v1.1/v2.0 scripts compute
  them: the best over each question's gold answers; `gold` [] for an unanswerable
  question. v1.1 scores a question without a prediction 0, v2.0 leaves it out (as the
  scripts do), and v2.0 adds HasAns_/NoAns_ scores where there are such questions."""
  exact, f1 = {}, {}
  for qid, answers in gold.items():
    if version_2:  # answers that normalize to nothing count as no answer
      answers = [a for a in answers if normalize_answer(a)] or ['']
    if qid not in predictions:
      continue
    exact[qid] = max((float(exact_match_score(predictions[qid], a)) for a in answers),
                     default=0.0)
    f1[qid] = max((f1_score(predictions[qid], a, version_2) for a in answers), default=0.0)

  def percent(scores, qids):
    return 100.0 * sum(scores[q] for q in qids) / max(len(qids), 1)

  total = max(len(exact) if version_2 else len(gold), 1)
  out = dict(exact_match=100.0 * sum(exact.values()) / total,
             f1=100.0 * sum(f1.values()) / total)
  if version_2:
    for prefix, qids in (('HasAns_', [q for q in exact if gold[q]]),
                         ('NoAns_', [q for q in exact if not gold[q]])):
      if qids:
        out[prefix + 'exact'], out[prefix + 'f1'] = percent(exact, qids), percent(f1, qids)
  return out
