"""BERT-base with whole-word masking: all pieces of a chosen word are masked together.

bertjax train --config experiments/bert_base_wwm.py --workdir gs://bucket/wwm --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_base_wwm.py:local --workdir /tmp/wwm
"""
from .common import bert_recipe


def get_config(arg=None):
  return bert_recipe('base', f'masking=whole_word,{arg or ""}')
