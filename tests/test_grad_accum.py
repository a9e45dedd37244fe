"""Gradient accumulation reduces across devices once a step, whatever the number of
micro-batches: counted in the compiled HLO, on 8 fake devices, data- and
FSDP-parallel; and it still equals the step on the whole batch, distillation's
(with its teacher) included."""
import dataclasses
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

from bertjax import config_lib, distill, sharding, steps
from bertjax.models import heads
from bertjax.models.bert import BertConfig

from conftest import ROOT

QUICKSTART = os.path.join(ROOT, 'experiments', 'quickstart.py')
REDUCES = re.compile(r'\b(all-reduce|reduce-scatter)(-start)?\(')


def build(mesh, accum, objective=None, seed=None, overrides=()):
  """The steps, mesh, rules and config; `objective(model_cfg, mesh, rules)` replaces
  pre-training's; `seed` the config's; `overrides` more config overrides."""
  c = config_lib.load_config(QUICKSTART + ':local')
  c = config_lib.apply_overrides(c, [f'mesh.{k}={v}' for k, v in mesh.items()]
                                 + [f'train.grad_accum_steps={accum}', 'train.batch_size=32',
                                    *overrides])
  model_cfg = BertConfig.from_dict({**c.model.to_dict(), 'vocab_size': 512})
  mesh_ = sharding.make_mesh(c.mesh)
  rules = sharding.rules_from_config(c.mesh)
  objective = objective and objective(c, model_cfg, mesh_, rules)
  fns = steps.build(model_cfg, c.optim, mesh_, rules, objective, total_steps=c.train.steps,
                    batch_size=c.train.batch_size, grad_accum_steps=accum,
                    seed=c.seed if seed is None else seed)
  return fns, mesh_, rules, c


def fake_batch(config, fns):
  rng = np.random.default_rng(0)
  b, length, p = config.train.batch_size, config.data.seq_len, config.data.masking.max_predictions
  batch = dict(
      input_ids=rng.integers(5, 500, (b, length)), token_type_ids=np.zeros((b, length)),
      attention_mask=np.ones((b, length)), position_ids=np.tile(np.arange(length), (b, 1)),
      mlm_positions=rng.integers(0, length, (b, p)),
      mlm_targets=rng.integers(5, 500, (b, p)), mlm_weights=np.ones((b, p), np.float32),
      nsp_labels=rng.integers(0, 2, (b,)))
  return {k: jax.device_put(v.astype(np.float32 if k == 'mlm_weights' else np.int32),
                            fns.batch_sharding) for k, v in batch.items()}


def reduces_inside_and_outside_loops(hlo: str) -> tuple[int, int]:
  """(reduce collectives in computations a while loop runs, the others)."""
  computations, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) \(', line)
    if header and line.rstrip().endswith('{'):
      name = header.group(1)
      computations[name] = []
    elif name is not None:
      computations[name].append(line)
  calls = {n: set(re.findall(r'(?:body|condition|to_apply|calls|branch_computations)='
                             r'\{?%?([\w.\-]+)', '\n'.join(lines)))
           for n, lines in computations.items()}
  in_loop, todo = set(), [b for lines in computations.values() for line in lines
                          for b in re.findall(r'\bbody=%?([\w.\-]+)', line)]
  while todo:
    n = todo.pop()
    if n not in in_loop:
      in_loop.add(n)
      todo.extend(calls.get(n, ()))
  inside = sum(len(REDUCES.findall('\n'.join(computations[n]))) for n in in_loop)
  total = sum(len(REDUCES.findall('\n'.join(lines))) for lines in computations.values())
  return inside, total - inside


@pytest.mark.parametrize('mesh', [dict(data=8, fsdp=1), dict(data=1, fsdp=8)])
def test_one_reduction_per_step_whatever_the_micro_batches(mesh):
  counts = {}
  for accum in (1, 4):
    fns, mesh_, rules, c = build(mesh, accum)
    leaves = len(jax.tree.leaves(fns.abstract_state['params']))
    with sharding.activate(mesh_, rules):
      state = fns.init(jax.random.key(0))
      hlo = fns.train_step.lower(state, fake_batch(c, fns)).compile().as_text()
    counts[accum] = reduces_inside_and_outside_loops(hlo)
  assert counts[4][0] == 0, counts  # nothing reduced inside the accumulation loop
  assert counts[1][0] == 0 and counts[1][1] > 0, counts
  # After the loop: one reduction per gradient leaf at most (XLA may combine them),
  # a few for the loss sums; not one per micro-batch.
  assert 0 < counts[4][1] <= leaves + 8, (counts, leaves)


@pytest.mark.parametrize('mesh', [dict(data=8, fsdp=1), dict(data=2, fsdp=4)])
def test_accumulated_step_equals_the_whole_batch_step(mesh):
  results = {}
  for accum in (1, 4):
    fns, mesh_, rules, c = build(mesh, accum)
    with sharding.activate(mesh_, rules):
      state, metrics = fns.train_step(fns.init(jax.random.key(0)), fake_batch(c, fns))
    results[accum] = jax.device_get((state['params'], metrics))
  for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[4])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def distillation(config, model_cfg, mesh, rules):
  """Distillation from a random teacher one layer deeper and as wide (the cosine term
  on), its params sharded by the same rules as the student's (over fsdp here)."""
  cfg = dataclasses.replace(model_cfg, num_layers=model_cfg.num_layers + 1)
  with sharding.activate(mesh, rules):
    model = heads.build('pretraining', cfg, rngs=nnx.Rngs(params=1))
    shardings = nnx.to_pure_dict(sharding.param_shardings(nnx.state(model), mesh, rules))
    params = jax.device_put(nnx.to_pure_dict(nnx.state(model)), shardings)
  teacher = distill.Teacher('random', cfg, nnx.graphdef(model), params)
  return distill.pretraining(config.distill, model_cfg, teacher)


def test_accumulated_distillation_step_equals_the_whole_batch_step():
  results = {}
  for accum in (1, 2):
    fns, mesh_, rules, c = build(dict(data=2, fsdp=4), accum, distillation)
    with sharding.activate(mesh_, rules):
      state, metrics = fns.train_step(fns.init(jax.random.key(0)), fake_batch(c, fns))
    results[accum] = jax.device_get((state['params'], metrics))
  assert results[1][1]['kl_loss'] > 0 and results[1][1]['cos_loss'] > 0
  assert results[1][1].keys() == results[2][1].keys()
  for a, b in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[2])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
