"""`bertjax bench --ablate`: where the train step's time goes, one stage at a time.

Times the config's step beside variants that leave one stage out or change it, on
the same synthetic batch, in interleaved rounds (machine noise hits all alike; each
figure is the median over rounds):

  full              the step a real run compiles (forward, loss, backward, optimizer)
  no_dropout        dropout off, hidden and attention
  no_optimizer      forward + backward only: the gradients, no clipping or AdamW
  forward           the training forward and loss alone (dropout on)
  threefry_dropout  dropout masks from `jax.random.bernoulli` (threefry) instead of
                    bertjax's counter hash (`layers.keep_mask`); swapped in here only
  xla_attention     attention `xla`, attention dropout off (the fused kernels have none)
  cudnn_attention   attention `cudnn`, attention dropout off (NVIDIA GPUs only)

Each row sits beside its matmul-only floor: its FLOPs (DESIGN.md's count; a forward
is a third of a train step's) at the rate this device reaches on one large square
matmul in the config's dtype, timed in the same rounds. A variant that cannot run here (cuDNN
without an NVIDIA GPU) gets a row saying why, not a figure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax import config_checks, config_lib, flops, sharding, steps
from bertjax.bench import step as step_lib
from bertjax.errors import UserError
from bertjax.models import layers


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  what: str
  stage: str                         # 'step' | 'grads' | 'forward'
  overrides: tuple[str, ...] = ()
  threefry_dropout: bool = False


_NO_ATTENTION_DROPOUT = 'model.attention_dropout_rate=0'
VARIANTS = (
    Variant('full', 'full step (as trained)', 'step'),
    Variant('no_dropout', 'dropout off', 'step',
            ('model.dropout_rate=0', _NO_ATTENTION_DROPOUT)),
    Variant('no_optimizer', 'forward + backward, no optimizer update', 'grads'),
    Variant('forward', 'forward + loss only', 'forward'),
    Variant('threefry_dropout', 'dropout from jax.random.bernoulli (threefry)', 'step',
            threefry_dropout=True),
    Variant('xla_attention', 'attention xla, no attention dropout', 'step',
            ('model.attention=xla', _NO_ATTENTION_DROPOUT)),
    Variant('cudnn_attention', 'attention cudnn, no attention dropout', 'step',
            ('model.attention=cudnn', _NO_ATTENTION_DROPOUT)),
)
NAMES = tuple(v.name for v in VARIANTS)


def select(spec: str) -> list[Variant]:
  """'all' or a comma-separated list of variant names; `full` always comes first."""
  if spec == 'all':
    return list(VARIANTS)
  wanted = [name.strip() for name in spec.split(',') if name.strip()]
  unknown = [name for name in wanted if name not in NAMES]
  if unknown:
    raise UserError(f'--ablate {spec!r}: unknown variant(s) {unknown}; name some of '
                    f'{", ".join(NAMES)} (comma-separated) or all')
  return [v for v in VARIANTS if v.name == 'full' or v.name in wanted]


@contextlib.contextmanager
def _dropout_generator(threefry: bool):
  """While tracing: dropout masks from threefry, as `jax.random.bernoulli` draws them."""
  if not threefry:
    yield
    return
  original = layers.keep_mask
  layers.keep_mask = lambda key, rate, shape: jax.random.bernoulli(key, 1.0 - rate, shape)
  try:
    yield
  finally:
    layers.keep_mask = original


def matmul_runner(dtype: str, n: int | None = None) -> tuple[Callable[[int], None], int]:
  """(run(k): k n x n by n x n matmuls on the default device, FLOPs of one)."""
  n = n or (2048 if jax.default_backend() == 'cpu' else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)

  def run(k: int) -> None:
    for _ in range(k):
      out = matmul(a, a)
    jax.block_until_ready(out)
  return run, n


def _gradient_runners(config, stage: str) -> tuple[Callable[[int], None], float, dict | None]:
  """The training forward (and, for 'grads', backward) alone, jitted like the step."""
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.mesh)
  model_cfg = config_lib.model_config(config, config.data.tokenizer.vocab_size)
  objective = steps.pretraining(model_cfg)
  fns = steps.build(model_cfg, config.optim, mesh, rules, objective,
                    **config_lib.step_settings(config))
  with sharding.activate(mesh, rules):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build_model(jax.random.key(0))))
    params = fns.init(jax.random.key(0))['params']
    batch = sharding.global_batch(step_lib.synthetic_batch(config), fns.batch_sharding)

    def loss(p, b):
      rngs = nnx.Rngs(dropout=jax.random.key(config.seed))
      sums = objective.batch_sums(nnx.merge(graphdef, p), b, rngs)
      return objective.loss_from_sums(sums, objective.batch_counts(b))

    params_sharding = fns.state_sharding['params']
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    fn, out = (jax.grad(loss), params_sharding) if stage == 'grads' else (loss, replicated)
    jitted = jax.jit(fn, in_shardings=(params_sharding, fns.batch_sharding), out_shardings=out)
    start = time.perf_counter()
    compiled = jitted.lower(params, batch).compile()
    compile_seconds = time.perf_counter() - start

  def run(n: int) -> None:
    for _ in range(n):
      result = compiled(params, batch)
    jax.block_until_ready(result)
  return run, compile_seconds, step_lib.memory_analysis(compiled)


def _variant_config(config, variant: Variant):
  copy = config.copy_and_resolve_references()
  config_lib.apply_overrides(copy, variant.overrides)
  config_checks.validate(copy)  # e.g. cudnn without an NVIDIA GPU stops here
  return copy


def _prepare(config, variant: Variant) -> dict:
  """A row with the variant's runner, or one saying why it was not measured."""
  row = dict(name=variant.name, what=variant.what)
  try:
    cfg = _variant_config(config, variant)
  except UserError as e:
    return dict(row, not_measured=str(e))
  with _dropout_generator(variant.threefry_dropout):
    if variant.stage == 'step':
      compiled = step_lib.compile_step(cfg)
      run, seconds, memory = compiled.run, compiled.compile_seconds, compiled.memory
    else:
      run, seconds, memory = _gradient_runners(cfg, variant.stage)
  return dict(row, run=run, compile_seconds=seconds, compiled_memory=memory)


def measure(config, variants: list[Variant], *, rounds: int, steps_per_round: int) -> dict:
  model_cfg = config_lib.model_config(config, config.data.tokenizer.vocab_size)
  b, length = config.train.batch_size, config.data.seq_len
  step_flops = b * length * flops.train_flops_per_token(
      model_cfg, length, config.data.masking.max_predictions)
  rows = [_prepare(config, v) for v in variants]
  # The matmul rate is timed in the same rounds, so load on the machine hits it alike.
  matmul_run, n = matmul_runner(config.model.dtype)
  matmul_row = dict(run=matmul_run)
  runnable = [r for r in rows if 'run' in r] + [matmul_row]
  for row in runnable:
    row['run'](2)  # warm-up: first-call work, allocator, caches
    row['times'] = []
  for _ in range(rounds):
    for row in runnable:
      start = time.perf_counter()
      row['run'](steps_per_round)
      row['times'].append((time.perf_counter() - start) / steps_per_round)
  matmul = dict(n=n, dtype=config.model.dtype,
                flops_per_sec=2 * n**3 / statistics.median(matmul_row['times']))
  stages = {v.name: v.stage for v in variants}
  full_time = None
  for row in rows:
    row.pop('run', None)
    if 'times' not in row:
      continue
    row['step_time'] = statistics.median(row.pop('times'))
    row['flops'] = step_flops / 3 if stages[row['name']] == 'forward' else step_flops
    row['matmul_floor'] = row['flops'] / matmul['flops_per_sec']
    row['tokens_per_sec'] = b * length / row['step_time']
    if row['name'] == 'full':
      full_time = row['step_time']
  for row in rows:
    if 'step_time' in row:
      row['vs_full'] = row['step_time'] - full_time
  device = jax.devices()[0]
  return dict(device=f'{jax.device_count()} x {device.device_kind}',
              model=config.model.preset, dtype=config.model.dtype,
              attention=config.model.attention, batch=b, seq_len=length,
              rounds=rounds, steps_per_round=steps_per_round, matmul=matmul, rows=rows)


def format_table(result: dict) -> str:
  m = result['matmul']
  lines = [f'{result["device"]}; {result["model"]}, {result["dtype"]}, attention '
           f'{result["attention"]}, batch {result["batch"]} x {result["seq_len"]}; median of '
           f'{result["rounds"]} interleaved rounds of {result["steps_per_round"]} steps',
           f'matmul floor at {m["flops_per_sec"] / 1e12:.3f} TFLOP/s ({m["n"]}^3 {m["dtype"]} '
           'matmul on this device)', '',
           '| variant | step (median) | vs full step | tokens/s | matmul floor | floor / step '
           '| compile | temp memory |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
  for r in result['rows']:
    if 'not_measured' in r:
      lines.append(f'| {r["what"]} | not measured: {r["not_measured"]} | | | | | | |')
      continue
    memory = r['compiled_memory']
    temp = '-' if memory is None else step_lib.size(memory['temp'])
    lines.append(f'| {r["what"]} | {r["step_time"] * 1e3:,.1f} ms | '
                 f'{r["vs_full"] * 1e3:+,.1f} ms | {r["tokens_per_sec"]:,.0f} | '
                 f'{r["matmul_floor"] * 1e3:,.1f} ms | '
                 f'{100 * r["matmul_floor"] / r["step_time"]:.0f}% | '
                 f'{r["compile_seconds"]:.1f} s | {temp} |')
  return '\n'.join(lines)


def run(config, spec: str, *, rounds: int, steps_per_round: int, as_json: bool) -> dict:
  result = measure(config, select(spec), rounds=rounds, steps_per_round=steps_per_round)
  print(json.dumps(result) if as_json else format_table(result))
  return result
