"""BERT-base with SpanBERT span masking (geometric span lengths, p=0.2, at most 10 words).

bertjax train --config experiments/bert_base_span.py --workdir gs://bucket/span --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_base_span.py:local --workdir /tmp/span
"""
from .common import bert_recipe


def get_config(arg=None):
  return bert_recipe('base', f'masking=span,{arg or ""}')
