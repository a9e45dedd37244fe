"""`bertjax bench`: train-step throughput of a config, measured as users compare it.

Times the jitted train step a real run compiles (its model config, params, optimizer
update, donation, the config's mesh) on synthetic batches shaped like the config's:
every sequence `seq_len` tokens with `max_predictions` masked positions. Prints
compile time, median step time over many device-synchronised steps after warm-up,
tokens/s and sequences/s, MFU against the device's bf16 peak (achieved FLOP/s where
the peak is unknown, e.g. on CPUs), peak device memory where the backend reports it,
and the padding efficiency of the config's real input pipeline when asked (`--data`).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from typing import Callable

import jax
import numpy as np

from bertjax import config_lib, flops, sharding, steps
from bertjax.models.bert import BertConfig


def synthetic_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """A global batch like the pipeline's, with no padding (see `padding_efficiency`).
  Its ids are the tokenizer's, as a real run's are."""
  rng = np.random.default_rng(seed)
  b, length, p = config.train.batch_size, config.data.seq_len, config.data.masking.max_predictions
  ids = rng.integers(5, config.data.tokenizer.vocab_size, (b, length)).astype(np.int32)
  positions = np.sort(rng.random((b, length)).argsort(1)[:, :p], axis=1).astype(np.int32)
  return dict(input_ids=ids, token_type_ids=(np.arange(length) >= length // 2).astype(
      np.int32)[None].repeat(b, 0), attention_mask=np.ones((b, length), np.int32),
              position_ids=np.arange(length, dtype=np.int32)[None].repeat(b, 0),
              mlm_positions=positions,
              mlm_targets=np.take_along_axis(ids, positions, 1),
              mlm_weights=np.ones((b, p), np.float32),
              nsp_labels=rng.integers(0, 2, b).astype(np.int32))


@dataclasses.dataclass
class CompiledStep:
  """The config's jitted, donated train step, compiled for a synthetic batch.
  `run(n)` takes n steps and waits for them; `bench` and the peers time the same one."""
  run: Callable[[int], None]
  compile_seconds: float
  model_cfg: BertConfig
  parameters: int


def compile_step(config) -> CompiledStep:
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  # The real run's own model config (vocabulary handling included), so the step timed
  # is the step a run compiles.
  model_cfg = config_lib.model_config(config, config.data.tokenizer.vocab_size)
  fns = steps.build(config, model_cfg, mesh, rules)
  with sharding.activate(mesh, rules):
    state = fns.init(jax.random.key(0))
    batch = sharding.global_batch(synthetic_batch(config), fns.batch_sharding)
    start = time.perf_counter()
    compiled = fns.train_step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
  holder = dict(state=state)

  def run(n: int) -> None:
    for _ in range(n):
      holder['state'], metrics = compiled(holder['state'], batch)
    jax.block_until_ready(metrics)
  return CompiledStep(run, compile_seconds, model_cfg,
                      sum(x.size for x in jax.tree.leaves(state['params'])))


def measure(config, *, steps_to_time: int = 20, warmup: int = 3,
            step: CompiledStep | None = None) -> dict:
  step = step or compile_step(config)
  step.run(warmup)
  times = []
  for _ in range(steps_to_time):
    start = time.perf_counter()
    step.run(1)
    times.append(time.perf_counter() - start)
  model_cfg = step.model_cfg
  step_time = statistics.median(times)
  b, length = config.train.batch_size, config.data.seq_len
  per_token = flops.train_flops_per_token(model_cfg, length, config.data.masking.max_predictions)
  achieved = per_token * b * length / step_time / jax.device_count()
  device = jax.devices()[0]
  peak = flops.peak_flops(device)
  memory = getattr(device, 'memory_stats', lambda: None)() or {}
  return dict(
      device=f'{jax.device_count()} x {device.device_kind}', model=config.model.preset,
      dtype=config.model.dtype, attention=config.model.attention, batch=b, seq_len=length,
      max_predictions=config.data.masking.max_predictions,
      parameters=step.parameters, compile_seconds=step.compile_seconds, step_time=step_time,
      step_time_p10=float(np.percentile(times, 10)), step_time_p90=float(np.percentile(times, 90)),
      tokens_per_sec=b * length / step_time, sequences_per_sec=b / step_time,
      flops_per_token=per_token, flops_per_sec_per_device=achieved,
      mfu=achieved / peak if peak else None,
      peak_memory_bytes=memory.get('peak_bytes_in_use'))


def padding_efficiency(config, workdir: str, batches: int = 20) -> float:
  """Share of real (non-padding) tokens in the config's own input batches."""
  from bertjax.data import pipeline
  data = pipeline.build(config.data, batch_size=config.train.batch_size,
                        eval_batches=config.train.eval_batches, seed=config.seed, workdir=workdir)
  iterator = pipeline.train_iterator(data, 0)
  masks = [next(iterator)['attention_mask'] for _ in range(batches)]
  return float(np.mean([(m > 0).mean() for m in masks]))


def format_table(result: dict) -> str:
  rows = [('device', result['device']),
          ('model', f'{result["model"]} ({result["parameters"] / 1e6:.1f}M params), '
                    f'{result["dtype"]}, attention {result["attention"]}'),
          ('batch x length', f'{result["batch"]} x {result["seq_len"]} '
                             f'({result["max_predictions"]} predictions a sequence)'),
          ('compile', f'{result["compile_seconds"]:.1f} s'),
          ('step time (median)', f'{result["step_time"] * 1e3:.1f} ms '
                                 f'(p10 {result["step_time_p10"] * 1e3:.1f}, '
                                 f'p90 {result["step_time_p90"] * 1e3:.1f})'),
          ('tokens/s', f'{result["tokens_per_sec"]:,.0f}'),
          ('sequences/s', f'{result["sequences_per_sec"]:,.1f}'),
          ('FLOP/s per device', f'{result["flops_per_sec_per_device"] / 1e12:.3f} T')]
  if result['mfu'] is not None:
    rows.append(('MFU', f'{100 * result["mfu"]:.1f}%'))
  if result['peak_memory_bytes'] is not None:
    rows.append(('peak device memory', f'{result["peak_memory_bytes"] / 2**30:.2f} GiB'))
  if result.get('padding_efficiency') is not None:
    rows.append(('padding efficiency', f'{100 * result["padding_efficiency"]:.1f}%'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def run(config, *, steps_to_time: int, as_json: bool, data_workdir: str | None) -> dict:
  result = measure(config, steps_to_time=steps_to_time)
  if data_workdir:
    result['padding_efficiency'] = padding_efficiency(config, data_workdir)
  print(json.dumps(result) if as_json else format_table(result))
  return result
