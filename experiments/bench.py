"""Throughput benchmarks: one model shape, batch, length and precision per run.

bertjax bench --config experiments/bench.py:model=small,batch=32,seq_len=128
bertjax bench --config experiments/bench.py:model=base,batch=256,dtype=bfloat16,attention=cudnn
bertjax bench --config experiments/bench.py:model=large,batch=8,scan   # layers as one scan
bertjax bench --config experiments/bench.py:local   # seconds, for tests
bertjax bench --config experiments/bench.py:model=large,batch=8,seq_len=512 --compile_only
  # XLA's memory analysis of the step, nothing allocated (add --config.model.remat=full)
bertjax bench --config experiments/bench.py:local --ablate   # where the step's time goes
bertjax bench --config experiments/bench.py:local --profile /tmp/trace   # top ops
bertjax bench data --corpus PREPARED_DIR   # input tokens/s per masking kind, one core

Suites measure several shapes in one run and mark issue 7's targets met or missed:
bertjax bench --suite experiments/bench.py:h200   # one H100/H200, bf16 (the GPU record)
bertjax bench --suite experiments/bench.py:cpu --steps 3 --rounds 5   # this 2-core CPU
"""
from bertjax import config_lib
from bertjax.errors import UserError


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


_GPU = 'dtype=bfloat16,attention=cudnn'
_SUITES = dict(
    h200=[
        dict(config=f'model=base,batch=256,seq_len=128,{_GPU}', min_mfu=0.45,
             peers=dict(versus='eager', min_ratio=2.0)),
        dict(config=f'model=large,batch=256,seq_len=128,{_GPU}', min_mfu=0.55),
        dict(config=f'model=large,batch=64,seq_len=512,{_GPU}', min_mfu=0.50),
        dict(config=f'model=large,batch=256,seq_len=128,{_GPU},scan', max_compile_s=60),
    ],
    cpu=[
        dict(config='model=small,batch=16', peers=dict(versus='fastest', min_ratio=1.3)),
        dict(config='model=large,batch=8'),
        dict(config='model=large,batch=8,scan', max_compile_s=60),
    ],
    local=[  # seconds, for tests
        dict(config='local', peers=dict(versus='eager')),
        dict(config='local,scan', max_compile_s=600),
    ],
)


def get_suite(name):
  if name not in _SUITES:
    raise UserError(f'no suite {name!r}; suites: {", ".join(_SUITES)}')
  return _SUITES[name]
