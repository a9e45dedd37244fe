"""Named-entity recognition, CoNLL-2003 (tfds `conll2003`) or CoNLL-format files.

bertjax train --config experiments/conll.py:init=runs/base --workdir runs/ner
bertjax train --config experiments/conll.py:init=runs/base,train=/data/train.conll,eval=/data/dev.conll --workdir runs/ner
bertjax train --config experiments/conll.py:local,init=runs/quickstart --workdir /tmp/ner
"""
from bertjax import config_lib



def get_config(arg=None):
  a = config_lib.parse_arg(arg, init='', train='tfds:conll2003:train',
                           eval='tfds:conll2003:dev', local=False)
  c = config_lib.finetune_defaults('tag')
  c.init = a.init
  c.task.train, c.task.eval = a.train, a.eval
  c.optim.learning_rate = 5e-5
  if a.local:
    c.task.train, c.task.eval = 'embedded', 'embedded'
    c.task.seq_len = 32
    c.train.epochs, c.train.batch_size, c.train.log_every = 1.0, 32, 10
    c.optim.learning_rate = 1e-3
  return c
