"""bertjax.scaling: its arithmetic on cases checked by hand, and docs/SCALING.md is
exactly what it prints."""
from __future__ import annotations

import os

import pytest

from bertjax import scaling
from bertjax.models.bert import BertConfig

from conftest import ROOT

TOY = scaling.Cluster(name='toy', devices=4, per_host=2, memory=1e9, peak=1e12, fast_bw=100.0,
                      slow_bw=10.0, max_tensor=2)


def test_bert_large_parameters_counted_by_hand():
  params, cfg = scaling.bert_params()
  d, f, v, layers = 1024, 4096, 30522, 24
  padded = 30592  # the vocabulary padded to a multiple of 128: rows the devices hold too
  embeddings = padded * d + 512 * d + 2 * d + 2 * d           # tokens, positions, types, LN
  layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # attention, FFN, 2 LN
  heads = (d * d + d) + (d * d + d + 2 * d + padded) + (2 * d + 2)  # pooler, MLM, NSP
  assert sum(p.size for p in params) == embeddings + layers * layer + heads == 336_297_858
  assert (cfg.num_layers, cfg.hidden_size, cfg.vocab_size) == (layers, d, v)
  # The default rules put every weight's 'embed' dimension on fsdp; only biases over
  # 'heads', 'mlp' or 'vocab' (on tensor) and the NSP bias have none.
  unsharded = [p for p in params if 'fsdp' not in p.mesh_axes]
  assert sum(p.size for p in unsharded) < 1e-3 * sum(p.size for p in params)
  assert {p.mesh_axes for p in unsharded} == {('tensor',), ()}


def test_collectives_by_hand():
  assert scaling.all_reduce(8.0, 4) == 12.0 and scaling.gather(8.0, 4) == 6.0
  # 32 H100s, 8 a host: 2*7/8 of 8 GB over NVLink, then 2*3/4 of the 1 GB share over IB.
  h100 = scaling.collective_seconds(scaling.H100_CLUSTER, scaling.all_reduce, 8e9, 32, 1)
  assert h100 == pytest.approx(2 * 7 / 8 * 8e9 / 450e9 + 2 * 3 / 4 * 1e9 / 50e9)
  # A group with stride 8 has one device a host: all of it crosses InfiniBand.
  across = scaling.collective_seconds(scaling.H100_CLUSTER, scaling.all_reduce, 8e9, 4, 8)
  assert across == pytest.approx(2 * 3 / 4 * 8e9 / 50e9)
  # v5p-256 (4x4x8): 8 chips fit one torus axis (2 links), 128 use all three (6 links).
  tpu = scaling.V5P_256
  assert tpu.devices == 128
  assert scaling.collective_seconds(tpu, scaling.gather, 8e9, 8, 1) == pytest.approx(
      7 / 8 * 8e9 / 200e9)
  assert scaling.collective_seconds(tpu, scaling.all_reduce, 8e9, 128, 1) == pytest.approx(
      2 * 127 / 128 * 8e9 / 600e9)
  assert scaling.collective_seconds(tpu, scaling.all_reduce, 8e9, 1, 1) == 0


def test_estimate_by_hand():
  params = [scaling.Param(1000, ('fsdp',)), scaling.Param(200, ('tensor',)),
            scaling.Param(10, ())]
  cfg = BertConfig(vocab_size=100, num_layers=2, hidden_size=8, num_heads=2,
                   intermediate_size=16)
  work = scaling.Workload('toy', batch=4, seq_len=8, max_predictions=2)
  e = scaling.estimate(TOY, work, scaling.Mesh(data=1, fsdp=2, tensor=2), params, cfg)
  assert e.micro_batch == 2                                  # 4 sequences over 2 shards
  assert e.state_bytes == 16 * (1000 / 2 + 200 / 2 + 10)     # 9760
  # fsdp weight: reduce-scatter 4000 B over 2 (data=1: no all-reduce); tensor weight:
  # all-reduce its 400 B half over the 2 batch shards; replicated: all-reduce 40 B.
  assert e.grad_bytes == 2000 + 400 + 40
  assert e.gather_bytes == 2 * 2000                           # forward and backward
  # 16 tokens x 8 wide x 2 bytes, all-reduced over 2, 4 a layer x 2 layers + 2.
  assert e.tensor_bytes == 10 * 256
  per_layer = 8 * 2 * 8 * (10 + 24 / 2)                       # s*b*h*(10 + 24/t)
  head = 2 * 2 * 100 * (2 + 4) / 2                            # b*P*V*6 / t
  assert e.activation_bytes == 2 * per_layer + head
  assert e.remat_activation_bytes == 2 * 8 * 2 * 8 * 2 + per_layer + head
  gathered = 2 * (1210 / 4) * 4 / 2                           # two layers' weights, /t
  assert e.memory_bytes == e.state_bytes + gathered + e.activation_bytes
  # Four micro-batches gather the weights once, before the loop (not forward and
  # backward), and hold them whole beside a full-size gradient sum.
  e4 = scaling.estimate(TOY, scaling.Workload('toy', 16, 8, 2), scaling.Mesh(1, 2, 2),
                        params, cfg, accum=4)
  assert e4.micro_batch == 2 and e4.gather_bytes == e.gather_bytes / 2
  assert e4.grad_bytes == e.grad_bytes
  whole = (1000 + 200 / 2 + 10) * 4                           # float32, tensor-sharded /t
  assert e4.memory_bytes == e4.state_bytes + 2 * whole + e4.activation_bytes


def test_recommendation_prefers_the_simpler_mesh_within_ten_percent():
  params = [scaling.Param(10_000, ('fsdp',))]
  cfg = BertConfig(vocab_size=100, num_layers=2, hidden_size=8, num_heads=2,
                   intermediate_size=16)
  ranked = scaling.recommend(TOY, scaling.Workload('toy', 8, 8, 2), params, cfg)
  fastest = min(e.step_s for e in ranked)
  assert ranked[0].step_s <= scaling.SIMPLER_WITHIN * fastest
  assert all(e.memory_bytes <= scaling.FIT * TOY.memory for e in ranked)


def test_docs_scaling_md_is_the_scripts_output():
  with open(os.path.join(ROOT, 'docs', 'SCALING.md'), encoding='utf-8') as f:
    assert f.read() == scaling.report(), 'regenerate: python -m bertjax.scaling > docs/SCALING.md'
