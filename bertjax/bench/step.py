"""`bertjax bench`: train-step throughput of a config, measured as users compare it.

Times the jitted train step a real run compiles (its model config, params, optimizer
update, donation, the config's mesh) on synthetic batches shaped like the config's:
every sequence `seq_len` tokens with `max_predictions` masked positions. Prints
compile time, median step time over many device-synchronised steps after warm-up,
tokens/s and sequences/s, MFU against the device's bf16 peak (achieved FLOP/s where
the peak is unknown, e.g. on CPUs), the compiled step's memory analysis (XLA's buffer
assignment: temporaries, arguments, outputs, generated code; every backend has it),
peak device memory where the backend reports it, and the padding efficiency of the
config's real input pipeline when asked (`--data`). `--compile_only` stops after the
compile (no weights are allocated), for memory figures of shapes too slow to step.
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


# CompiledMemoryStats fields, as reported (bytes per device).
MEMORY_FIELDS = dict(temp='temp_size_in_bytes', argument='argument_size_in_bytes',
                     output='output_size_in_bytes', alias='alias_size_in_bytes',
                     generated_code='generated_code_size_in_bytes')


def memory_analysis(compiled) -> dict[str, int] | None:
  """XLA's memory analysis of a compiled computation, in bytes per device
  (`alias` is the part of the output that reuses donated arguments)."""
  stats = compiled.memory_analysis()
  if stats is None:  # a backend without it
    return None
  return {name: int(getattr(stats, field)) for name, field in MEMORY_FIELDS.items()}


@dataclasses.dataclass
class CompiledStep:
  """The config's jitted, donated train step, compiled for a synthetic batch.
  `run(n)` takes n steps and waits for them; `bench` and the peers time the same one.
  With `allocate=False` it is compiled from shapes alone and `run` is None."""
  run: Callable[[int], None] | None
  compile_seconds: float
  model_cfg: BertConfig
  parameters: int
  memory: dict[str, int] | None


def compile_step(config, *, allocate: bool = True) -> CompiledStep:
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  # The real run's own model config (vocabulary handling included), so the step timed
  # is the step a run compiles.
  model_cfg = config_lib.model_config(config, config.data.tokenizer.vocab_size)
  fns = steps.build(model_cfg, config.optim, mesh, rules, **config_lib.step_settings(config))
  with sharding.activate(mesh, rules):
    if allocate:
      state = fns.init(jax.random.key(0))
      batch = sharding.global_batch(synthetic_batch(config), fns.batch_sharding)
    else:
      state = fns.abstract_state
      batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=fns.batch_sharding)
               for k, v in synthetic_batch(config).items()}
    start = time.perf_counter()
    compiled = fns.train_step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
  parameters = sum(x.size for x in jax.tree.leaves(fns.abstract_state['params']))
  if not allocate:
    return CompiledStep(None, compile_seconds, model_cfg, parameters, memory_analysis(compiled))
  holder = dict(state=state)

  def run(n: int) -> None:
    for _ in range(n):
      holder['state'], metrics = compiled(holder['state'], batch,
                                          *fns.train_step.bound_args)
    jax.block_until_ready(metrics)
  return CompiledStep(run, compile_seconds, model_cfg, parameters, memory_analysis(compiled))


def describe(config, step: CompiledStep) -> dict:
  """What was compiled: the fields every bench result starts with."""
  device = jax.devices()[0]
  m = config.model
  return dict(
      device=f'{jax.device_count()} x {device.device_kind}', model=m.preset, dtype=m.dtype,
      attention=m.attention, remat=m.remat, scan_layers=m.scan_layers,
      batch=config.train.batch_size, seq_len=config.data.seq_len,
      max_predictions=config.data.masking.max_predictions, parameters=step.parameters,
      compile_seconds=step.compile_seconds, compiled_memory=step.memory)


def measure(config, *, steps_to_time: int = 20, warmup: int = 3,
            step: CompiledStep | None = None) -> dict:
  step = step or compile_step(config)
  if step.run is None:
    return describe(config, step)
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
      describe(config, step), step_time=step_time,
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


def size(n: int) -> str:
  return f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


def format_memory(memory: dict[str, int] | None) -> str:
  if memory is None:
    return 'not reported by this backend'
  return ', '.join(f'{name.replace("_", " ")} {size(memory[name])}'
                   for name in ('temp', 'argument', 'output', 'generated_code'))


def format_table(result: dict) -> str:
  layers = ('scanned' if result['scan_layers'] else 'unrolled') + ' layers'
  rows = [('device', result['device']),
          ('model', f'{result["model"]} ({result["parameters"] / 1e6:.1f}M params), '
                    f'{result["dtype"]}, attention {result["attention"]}, '
                    f'remat {result["remat"]}, {layers}'),
          ('batch x length', f'{result["batch"]} x {result["seq_len"]} '
                             f'({result["max_predictions"]} predictions a sequence)'),
          ('compile', f'{result["compile_seconds"]:.1f} s'),
          ('compiled memory', format_memory(result['compiled_memory']))]
  if 'compilation_cache' in result:
    cache = result['compilation_cache']
    rows.append(('compilation cache', f'{cache["dir"]}: {cache["hits"]} hits, '
                                      f'{cache["misses"]} misses' if cache['dir'] else 'off'))
  if 'step_time' not in result:  # --compile_only
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)
  rows += [('step time (median)', f'{result["step_time"] * 1e3:.1f} ms '
                                 f'(p10 {result["step_time_p10"] * 1e3:.1f}, '
                                 f'p90 {result["step_time_p90"] * 1e3:.1f})'),
          ('tokens/s', f'{result["tokens_per_sec"]:,.0f}'),
          ('sequences/s', f'{result["sequences_per_sec"]:,.1f}'),
          ('FLOP/s per device', f'{result["flops_per_sec_per_device"] / 1e12:.3f} T')]
  if result['mfu'] is not None:
    rows.append(('MFU', f'{100 * result["mfu"]:.1f}%'))
  if result['peak_memory_bytes'] is not None:
    rows.append(('peak device memory', size(result['peak_memory_bytes'])))
  if result.get('padding_efficiency') is not None:
    rows.append(('padding efficiency', f'{100 * result["padding_efficiency"]:.1f}%'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def run(config, *, steps_to_time: int, as_json: bool, data_workdir: str | None,
        compile_only: bool = False, cache=None, profile_dir: str | None = None) -> dict:
  """`cache`: (directory or None, compilation_cache.HitCounter) when the CLI set it up.
  `profile_dir`: after timing, trace three steps there and summarise their top ops."""
  compiled = compile_step(config, allocate=not compile_only)
  result = measure(config, steps_to_time=steps_to_time, step=compiled)
  if profile_dir:
    from bertjax.bench import profile_summary
    with jax.profiler.trace(profile_dir):
      compiled.run(3)
    result['profile'] = profile_summary.summarise(profile_summary.newest_trace(profile_dir))
  if cache is not None:
    result['compilation_cache'] = dict(dir=cache[0], hits=cache[1].hits,
                                       misses=cache[1].misses)
  if data_workdir:
    result['padding_efficiency'] = padding_efficiency(config, data_workdir)
  if as_json:
    print(json.dumps(result))
  else:
    print(format_table(result))
    if profile_dir:
      from bertjax.bench import profile_summary
      print('\n' + profile_summary.format_table(result['profile']))
  return result
