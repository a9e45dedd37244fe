"""AG News topic classification (4 classes) from TSV files, e.g. ../shared/data/agnews.

bertjax import --format hf --from MINILM_DIR --workdir runs/minilm
bertjax train --config experiments/agnews.py:init=runs/minilm --workdir runs/agnews
bertjax train --config experiments/agnews.py:init=runs/minilm,data=/data/agnews --workdir ...
bertjax bench --finetune --config experiments/agnews.py:init=MINILM_DIR --workdir runs/side
  (bertjax and transformers fine-tuned alike, side by side)
"""
import os

from bertjax import config_lib



def get_config(arg=None):
  a = config_lib.parse_arg(arg, init='', data='../shared/data/agnews', steps=300,
                           local=False)
  c = config_lib.finetune_defaults('classify')
  c.init = a.init
  # Rows are `text<TAB>label` with no header; train on one file, evaluate on the other.
  c.task.train = os.path.join(a.data, 'dev.tsv')
  c.task.eval = os.path.join(a.data, 'test.tsv')
  c.task.header = False
  c.task.text_columns, c.task.label_column = ('0',), '1'
  c.task.seq_len = 64  # headlines and first sentences: ~95% fit in 64 WordPieces
  c.train.steps = a.steps
  c.train.batch_size = 32
  c.train.eval_every = a.steps
  c.train.eval_batch_size = 128
  c.train.log_every = 25
  c.optim.learning_rate = 1e-4  # a small (MiniLM-sized) model takes a larger rate
  if a.local:
    c.task.train, c.task.eval = 'embedded', 'embedded'
    c.task.header, c.task.text_columns, c.task.label_column = True, ('sentence',), 'label'
    c.task.seq_len = 32
    c.train.steps, c.train.eval_every, c.train.log_every = 20, 20, 10
    c.optim.learning_rate = 1e-3
  return c
