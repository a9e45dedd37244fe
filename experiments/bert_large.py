"""BERT-large (24 layers, 1024 wide), the original two-phase recipe.

bertjax train --config experiments/bert_large.py --workdir gs://bucket/large-p1 --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_large.py:phase=2,init=gs://bucket/large-p1 --workdir gs://bucket/large-p2 --config.data.corpus='/data/wiki/*.txt'
bertjax train --config experiments/bert_large.py:local --workdir /tmp/large   # seconds, CPU
"""
from .common import bert_recipe


def get_config(arg=None):
  return bert_recipe('large', arg)
