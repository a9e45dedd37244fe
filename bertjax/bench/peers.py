"""bertjax beside the systems users would otherwise train BERT with, in one run.

The same model shape, batch, sequence length, masking rate and dropout go through
one full train step (forward, MLM + NSP loss, backward, gradient clipping and AdamW)
in:
- bertjax (the config's own jitted, donated train step);
- `transformers` BertForPreTraining in PyTorch eager, SDPA attention;
- the same under `torch.compile`, where it compiles;
- `transformers` 4.x FlaxBertForPreTraining, jitted and donated, in a subprocess
  (`bertjax.bench.flax_peer`; 5.x has no Flax models).
The peers get the tokenizer's vocabulary, as their users train with it; bertjax gets
the model its real runs build from it (`config_lib.model_config`).
Rounds interleave the systems so machine noise hits all alike; each system's figure
is its median over rounds. A peer that cannot run here gets a row saying why.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from bertjax import config_lib
from bertjax.bench import flax_peer, step
from bertjax.errors import UserError


def _hf_config(config) -> dict:
  m = config_lib.model_config(config, config.data.tokenizer.vocab_size)
  return dict(vocab_size=config.data.tokenizer.vocab_size, hidden_size=m.hidden_size,
              num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
              intermediate_size=m.intermediate_size,
              max_position_embeddings=m.max_position_embeddings,
              hidden_dropout_prob=m.dropout_rate,
              attention_probs_dropout_prob=m.attention_dropout_rate)


def _hf_batch(config) -> dict[str, np.ndarray]:
  """The bench's batch as `transformers` takes it: MLM labels -100 off the masks."""
  batch = step.synthetic_batch(config)
  labels = np.full_like(batch['input_ids'], -100)
  np.put_along_axis(labels, batch['mlm_positions'], batch['mlm_targets'], 1)
  return dict(input_ids=batch['input_ids'], token_type_ids=batch['token_type_ids'],
              attention_mask=batch['attention_mask'], labels=labels,
              next_sentence_label=batch['nsp_labels'])


def _torch_runner(config, *, compiled: bool):
  import torch
  import transformers
  hf_cfg = transformers.BertConfig(**_hf_config(config), attn_implementation='sdpa')
  dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[config.model.dtype]
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = transformers.BertForPreTraining(hf_cfg).to(device).train()
  o = config.optim
  optimizer = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                eps=o.eps, weight_decay=o.weight_decay)
  inputs = {k: torch.as_tensor(v, dtype=torch.long, device=device)
            for k, v in _hf_batch(config).items()}

  def train_step():
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
      loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  step = torch.compile(train_step) if compiled else train_step

  def run(n):
    for _ in range(n):
      loss = step()
    loss.item()  # synchronise
  return run


def _flax_runner(config):
  o = config.optim
  spec = dict(bert_config=_hf_config(config), dtype=config.model.dtype,
              optim=dict(learning_rate=o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps,
                         weight_decay=o.weight_decay, clip_norm=o.clip_norm))
  return flax_peer.start(spec, _hf_batch(config))


TORCH_EAGER = 'transformers (PyTorch eager, SDPA)'
TORCH_COMPILE = 'transformers (torch.compile)'
FLAX = 'transformers 4.x (Flax, jit)'


SYSTEMS = ('eager', 'compile', 'flax')


def select(spec: str) -> set[str]:
  """`--peers` SYSTEMS: 'all' or a comma-separated subset of SYSTEMS."""
  if spec == 'all':
    return set(SYSTEMS)
  chosen = {name.strip() for name in spec.split(',') if name.strip()}
  if not chosen or chosen - set(SYSTEMS):
    raise UserError(f'--peers {spec!r}: name some of {",".join(SYSTEMS)} (comma-separated) '
                    'or all')
  return chosen


def compare(config, *, rounds: int = 5, steps_per_round: int = 5, with_compile: bool = True,
            with_flax: bool = True, ours: step.CompiledStep | None = None) -> list[dict]:
  """`ours`: bertjax's step if the caller compiled it already (it is not compiled twice)."""
  runners = {'bertjax': (ours or step.compile_step(config)).run,
             TORCH_EAGER: _torch_runner(config, compiled=False)}
  skipped = {}
  if with_compile:
    try:
      runners[TORCH_COMPILE] = _torch_runner(config, compiled=True)
      runners[TORCH_COMPILE](1)
    except Exception as e:  # torch.compile needs a C++ toolchain and supported ops
      runners.pop(TORCH_COMPILE, None)
      skipped[TORCH_COMPILE] = f'{type(e).__name__}: {str(e).splitlines()[0][:120]}'
  if with_flax:
    try:
      runners[FLAX] = _flax_runner(config)
    except flax_peer.Unavailable as e:
      skipped[FLAX] = str(e)
  for run in runners.values():
    run(2)  # warm-up: compilation, allocator, caches
  tokens = config.train.batch_size * config.data.seq_len * steps_per_round
  rates = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run(steps_per_round)
      rates[name].append(tokens / (time.perf_counter() - start))
  for run in runners.values():
    getattr(run, 'close', lambda: None)()
  ours = statistics.median(rates['bertjax'])
  rows = [dict(system=name, tokens_per_sec=statistics.median(r),
               ratio_to_bertjax=statistics.median(r) / ours) for name, r in rates.items()]
  return rows + [dict(system=name, tokens_per_sec=None, ratio_to_bertjax=None, skipped=why)
                 for name, why in skipped.items()]


def format_table(rows: list[dict]) -> str:
  width = max(len(r['system']) for r in rows)
  lines = [f'{"system":<{width}}  {"tokens/s":>10}  {"vs bertjax":>10}']
  for r in rows:
    if r['tokens_per_sec'] is None:
      lines.append(f'{r["system"]:<{width}}  {"-":>10}  {"-":>10}  skipped: {r["skipped"]}')
      continue
    lines.append(f'{r["system"]:<{width}}  {r["tokens_per_sec"]:>10,.0f}  '
                 f'{r["ratio_to_bertjax"]:>9.2f}x')
  best_peer = max((r for r in rows if r['system'] != 'bertjax' and r['tokens_per_sec']),
                  key=lambda r: r['tokens_per_sec'])
  lines.append(f'bertjax / fastest peer = {1 / best_peer["ratio_to_bertjax"]:.2f}x')
  return '\n'.join(lines)
