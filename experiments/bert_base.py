"""BERT-base (12 layers, 768 wide), the original two-phase recipe.

bertjax train --config experiments/bert_base.py --workdir gs://bucket/base-p1 --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_base.py:phase=2,init=gs://bucket/base-p1 --workdir gs://bucket/base-p2 --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_base.py:masking=span --workdir ...   # or whole_word, ngram
bertjax train --config experiments/bert_base.py:local --workdir /tmp/base   # seconds, CPU
"""
from .common import bert_recipe


def get_config(arg=None):
  return bert_recipe('base', arg)
