"""BERT-base with SpanBERT span masking (geometric span lengths, p=0.2, at most 10 words).

`:sbo` is SpanBERT's published recipe: span masking plus the span-boundary objective
(model.sbo, loss MLM + SBO) on single segments without NSP (Joshi et al. 2020).

bertjax train --config experiments/bert_base_span.py --workdir gs://bucket/span --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_base_span.py:sbo --workdir gs://bucket/spanbert --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_base_span.py:local --workdir /tmp/span
bertjax train --config experiments/bert_base_span.py:local,sbo --workdir /tmp/spanbert
"""
from .common import bert_recipe


def get_config(arg=None):
  items = [s.strip() for s in (arg or '').split(',') if s.strip()]
  c = bert_recipe('base', ','.join(['masking=span'] + [i for i in items if i != 'sbo']))
  if 'sbo' in items:
    c.model.sbo = True
    c.data.sentence_objective = 'none'  # SpanBERT drops NSP
  return c
