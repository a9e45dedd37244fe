"""The embedded default: a tiny BERT on the generated corpus, in minutes on a CPU.

bertjax train --config experiments/quickstart.py --workdir runs/quickstart
bertjax train --config experiments/quickstart.py:local --workdir /tmp/qs   # seconds
"""
from bertjax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, local=False)
  c = config_lib.pretrain_defaults(model='tiny')
  c.data.corpus = 'embedded'
  c.data.embedded_documents = 4000
  # Short sequences: a tiny model learns to use context far sooner at 64 than at 128.
  c.data.seq_len = 64
  c.data.tokenizer.vocab_size = 512
  c.data.tokenizer.model_type = 'bpe'
  c.data.masking.max_predictions = 10
  c.model.dropout_rate = 0.0  # a small model on a small corpus underfits; no dropout
  c.model.attention_dropout_rate = 0.0
  c.train.steps = 600
  c.train.batch_size = 64
  c.train.log_every = 20
  c.train.checkpoint_every = 200
  c.train.eval_batches = 20
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 60
  c.optim.weight_decay = 0.01
  if arg.local:
    c.data.embedded_documents = 400
    c.train.steps = 20
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.eval_batches = 4
    c.optim.warmup_steps = 5
  return c
