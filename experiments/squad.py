"""Extractive QA on SQuAD v1.1 (or v2.0 with `:v2`), tfds `squad` or SQuAD JSON files.

bertjax train --config experiments/squad.py:init=runs/base --workdir runs/squad
bertjax train --config experiments/squad.py:v2,init=runs/base --workdir runs/squad2
bertjax train --config experiments/squad.py:init=runs/base,train=train-v1.1.json,eval=dev-v1.1.json --workdir ...
bertjax train --config experiments/squad.py:local,init=runs/quickstart --workdir /tmp/squad
"""
from bertjax import config_lib



def get_config(arg=None):
  a = config_lib.parse_arg(arg, init='', v2=False, train='', eval='', local=False)
  version = 'v2.0' if a.v2 else 'v1.1'
  c = config_lib.finetune_defaults('qa')
  c.init = a.init
  c.task.train = a.train or f'tfds:squad/{version}:train'
  c.task.eval = a.eval or f'tfds:squad/{version}:validation'
  c.task.version_2 = a.v2
  # BERT's SQuAD recipe: length 384, stride 128, lr 3e-5, batch 32, 2 epochs.
  c.task.seq_len = 384
  c.train.epochs = 2.0
  c.optim.learning_rate = 3e-5
  if a.local:
    c.task.train, c.task.eval = 'embedded', 'embedded'
    c.task.seq_len, c.task.doc_stride, c.task.max_query_length = 64, 32, 16
    c.train.epochs, c.train.batch_size, c.train.log_every = 1.0, 32, 10
    c.optim.learning_rate = 1e-3
  return c
