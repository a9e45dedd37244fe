"""Throughput benchmarks: one model shape, batch, length and precision per run.

bertjax bench --config experiments/bench.py:model=small,batch=32,seq_len=128
bertjax bench --config experiments/bench.py:model=base,batch=256,dtype=bfloat16,attention=cudnn
bertjax bench --config experiments/bench.py:model=large,batch=8,scan   # layers as one scan
bertjax bench --config experiments/bench.py:local   # seconds, for tests
"""
from bertjax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, model='small', batch=32, seq_len=128, dtype='float32',
                           attention='xla', rate=0.15, scan=False, local=False)
  c = config_lib.pretrain_defaults(model=a.model)
  c.model.dtype, c.model.attention, c.model.scan_layers = a.dtype, a.attention, a.scan
  if a.attention != 'xla':  # the fused kernels have no attention-probability dropout
    c.model.attention_dropout_rate = 0.0
  c.train.batch_size, c.data.seq_len = a.batch, a.seq_len
  c.data.masking.rate = a.rate
  c.data.masking.max_predictions = max(1, round(a.seq_len * a.rate))
  c.train.steps = 1000
  if a.local:
    c.model = config_lib.model_preset('tiny')
    c.train.batch_size, c.data.seq_len, c.data.masking.max_predictions = 8, 64, 10
    c.data.corpus, c.data.embedded_documents = 'embedded', 400
    c.data.tokenizer.vocab_size, c.data.tokenizer.model_type = 512, 'bpe'
  return c
