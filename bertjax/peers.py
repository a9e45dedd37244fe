"""bertjax beside the systems users would otherwise train BERT with, in one run.

The same model shape, batch, sequence length and masking rate go through one full
train step (forward, MLM + NSP loss, backward, AdamW update) in:
- bertjax (the config's own jitted, donated train step);
- `transformers` BertForPreTraining in PyTorch eager, SDPA attention;
- the same under `torch.compile`, where it compiles.
Rounds interleave the systems so machine noise hits all alike; each system's figure
is its median over rounds. `transformers` 5 dropped its Flax BERT, so that peer is
measured only where transformers 4.x is installed.
"""
from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from bertjax import bench, sharding, steps


def _bertjax_runner(config):
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  model_cfg = bench.model_config(config)
  fns = steps.build(config, model_cfg, mesh, rules)
  holder = {}
  with sharding.activate(mesh, rules):
    holder['state'] = fns.init(jax.random.key(0))
    batch = sharding.global_batch(bench.synthetic_batch(config, model_cfg.vocab_size),
                                  fns.batch_sharding)
    step = fns.train_step.lower(holder['state'], batch).compile()

  def run(n):
    for _ in range(n):
      holder['state'], metrics = step(holder['state'], batch)
    jax.block_until_ready(metrics)
  return run


def _torch_runner(config, *, compiled: bool):
  import torch
  import transformers
  model_cfg = bench.model_config(config)
  hf_cfg = transformers.BertConfig(
      vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
      num_hidden_layers=model_cfg.num_layers, num_attention_heads=model_cfg.num_heads,
      intermediate_size=model_cfg.intermediate_size,
      max_position_embeddings=model_cfg.max_position_embeddings,
      hidden_dropout_prob=model_cfg.dropout_rate,
      attention_probs_dropout_prob=model_cfg.attention_dropout_rate,
      attn_implementation='sdpa')
  dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[config.model.dtype]
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = transformers.BertForPreTraining(hf_cfg).to(device).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.learning_rate,
                                weight_decay=config.optim.weight_decay)
  batch = bench.synthetic_batch(config, model_cfg.vocab_size)
  labels = np.full_like(batch['input_ids'], -100)
  np.put_along_axis(labels, batch['mlm_positions'], batch['mlm_targets'], 1)
  as_tensor = lambda x: torch.as_tensor(x, dtype=torch.long, device=device)
  inputs = dict(input_ids=as_tensor(batch['input_ids']),
                token_type_ids=as_tensor(batch['token_type_ids']),
                attention_mask=as_tensor(batch['attention_mask']),
                labels=as_tensor(labels), next_sentence_label=as_tensor(batch['nsp_labels']))

  def train_step():
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
      loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  step = torch.compile(train_step) if compiled else train_step

  def run(n):
    for _ in range(n):
      loss = step()
    loss.item()  # synchronise
  return run


def compare(config, *, rounds: int = 5, steps_per_round: int = 5,
            with_compile: bool = True) -> list[dict]:
  runners = {'bertjax': _bertjax_runner(config),
             'transformers (PyTorch eager, SDPA)': _torch_runner(config, compiled=False)}
  try:
    if with_compile:
      compiled = _torch_runner(config, compiled=True)
      compiled(1)
      runners['transformers (torch.compile)'] = compiled
  except Exception as e:  # torch.compile needs a C++ toolchain and supported ops
    print(f'torch.compile peer skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}')
  for run in runners.values():
    run(2)  # warm-up: compilation, allocator, caches
  tokens = config.train.batch_size * config.data.seq_len * steps_per_round
  rates = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run(steps_per_round)
      rates[name].append(tokens / (time.perf_counter() - start))
  ours = statistics.median(rates['bertjax'])
  return [dict(system=name, tokens_per_sec=statistics.median(r),
               ratio_to_bertjax=statistics.median(r) / ours) for name, r in rates.items()]


def format_table(rows: list[dict]) -> str:
  width = max(len(r['system']) for r in rows)
  lines = [f'{"system":<{width}}  {"tokens/s":>10}  {"vs bertjax":>10}']
  for r in rows:
    lines.append(f'{r["system"]:<{width}}  {r["tokens_per_sec"]:>10,.0f}  '
                 f'{r["ratio_to_bertjax"]:>9.2f}x')
  best_peer = max((r for r in rows if r['system'] != 'bertjax'),
                  key=lambda r: r['tokens_per_sec'])
  lines.append(f'bertjax / fastest peer = {1 / best_peer["ratio_to_bertjax"]:.2f}x')
  return '\n'.join(lines)
