"""Per-step communication and per-device memory of BERT pre-training, on paper.

`python -m bertjax.scaling > docs/SCALING.md` writes the estimates for BERT-large on
32 H100s (4 hosts) and on a TPU v5p-256, at the recipe's batches and at LAMB's, and
picks a mesh for each. The parameter count and the shardings are the real ones: the
model is built abstractly (nnx.eval_shape) and every weight is placed by
`sharding.logical_to_spec` with the default rules; FLOPs come from `bertjax.flops`.

Collectives are costed as bandwidth-optimal rings (latency ignored): an all-reduce of
S bytes over n devices sends 2(n-1)/n*S per device, a reduce-scatter or all-gather
(n-1)/n*S. A group that spans hosts runs hierarchically: inside the host over the fast
links, then across hosts on the 1/a share each device holds (a devices a host).
"""
from __future__ import annotations

import dataclasses
import functools
import math

from bertjax import config_lib, distributed, flops, sharding

GB = 1e9
F32 = 4   # parameters, gradients and optimizer moments are float32
BF16 = 2  # activations in the compute dtype
FIT = 0.9  # plan on 90% of device memory (XLA_PYTHON_CLIENT_MEM_FRACTION=0.9)
# Start-up cost of one collective that cannot be merged with others (the per-layer
# FSDP gathers and tensor-parallel all-reduces; XLA combines gradient reductions).
LATENCY = 10e-6


@dataclasses.dataclass(frozen=True)
class Cluster:
  name: str
  devices: int
  per_host: int        # devices sharing the fast links (the whole slice on a TPU)
  memory: float        # bytes of HBM a device
  peak: float          # dense bf16 FLOP/s a device
  fast_bw: float       # bytes/s a device sends over the fast links
  slow_bw: float       # bytes/s a device sends across hosts
  max_tensor: int      # the largest tensor-parallel axis worth considering


# Sources in docs/SCALING.md: NVIDIA H100 SXM and DGX H100 datasheets; Google Cloud TPU
# v5p documentation.
H100_CLUSTER = Cluster(
    name='32 x H100 SXM 80 GB (4 hosts x 8, NVLink 4 inside, 8 x 400 Gb/s InfiniBand across)',
    devices=32, per_host=8, memory=80 * GB, peak=flops.PEAK_FLOPS['nvidia h100'],
    fast_bw=450 * GB, slow_bw=50 * GB, max_tensor=8)
# v5p-256 names TensorCores; JAX sees one megacore device a chip. ICI: 4,800 Gb/s a
# chip over 6 links (3D torus); a collective over one torus axis uses that axis's 2
# links (200 GB/s), one over the whole slice all 6.
V5P_256 = Cluster(
    name=f'TPU v5p-256 ({distributed.tpu_devices("v5p-256")} chips, 95 GB HBM, 3D-torus ICI)',
    devices=distributed.tpu_devices('v5p-256'), per_host=distributed.tpu_devices('v5p-256'),
    memory=95 * GB, peak=flops.PEAK_FLOPS['tpu v5p'], fast_bw=600 * GB, slow_bw=600 * GB,
    max_tensor=8)
TPU_LINK_BW = 100 * GB  # one ICI link, one direction (600 GB/s over 6 links)
TPU_TORUS = (4, 4, 8)   # the default v5p-256 topology


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  batch: int
  seq_len: int
  max_predictions: int


WORKLOADS = (
    Workload('recipe phase 1', 256, 128, 20),
    Workload('recipe phase 2', 256, 512, 80),
    Workload('LAMB phase 1', 65_536, 128, 20),
    Workload('LAMB phase 2', 32_768, 512, 80),
)


@dataclasses.dataclass(frozen=True)
class Param:
  size: int          # elements
  mesh_axes: tuple   # mesh axes sharding it ('fsdp', 'tensor')


@functools.cache
def bert_params(model: str = 'large', vocab_size: int = 30522) -> tuple[tuple[Param, ...],
                                                                     object]:
  """The pre-training model's weights (encoder, embeddings, MLM and NSP heads) with the
  mesh axes the default rules put them on, and the model config."""
  import jax
  from flax import nnx
  from bertjax import steps
  config = config_lib.pretrain_defaults(model)
  model_cfg = config_lib.model_config(config, vocab_size)
  abstract = nnx.eval_shape(lambda: steps.pretraining(model_cfg).build_model(jax.random.key(0)))
  params = []
  for v in jax.tree.leaves(nnx.state(abstract, nnx.Param),
                           is_leaf=lambda x: isinstance(x, nnx.Variable)):
    shape = v.get_value().shape
    axes = v.get_metadata().get('out_sharding') or (None,) * len(shape)
    spec = sharding.logical_to_spec(axes, sharding.DEFAULT_RULES)
    used = tuple(a for entry in spec if entry for a in ((entry,) if isinstance(entry, str)
                                                        else entry))
    params.append(Param(math.prod(shape), used))
  return tuple(params), model_cfg


def all_reduce(size: float, n: int) -> float:
  return 2 * (n - 1) / n * size


def gather(size: float, n: int) -> float:
  """Bytes a device sends in an all-gather (or reduce-scatter) of `size` over n."""
  return (n - 1) / n * size


def collective_seconds(cluster: Cluster, kind, size: float, n: int, stride: int) -> float:
  """Time of `kind` (all_reduce or gather) over a mesh axis group of n devices whose
  neighbours are `stride` devices apart (the product of the axes after it)."""
  if n == 1:
    return 0.0
  if cluster.per_host == cluster.devices:  # one ICI domain: count the torus axes used
    dims, covered = 0, 1
    for extent in sorted(TPU_TORUS, reverse=True):
      if covered >= n:
        break
      covered, dims = covered * extent, dims + 1
    return kind(size, n) / (2 * TPU_LINK_BW * dims)
  inside = max(1, min(n, cluster.per_host // stride))
  across = n // inside
  seconds = kind(size, inside) / cluster.fast_bw if inside > 1 else 0.0
  return seconds + (kind(size / inside, across) / cluster.slow_bw if across > 1 else 0.0)


@dataclasses.dataclass(frozen=True)
class Mesh:
  data: int
  fsdp: int
  tensor: int

  def size(self, axis: str) -> int:
    return getattr(self, axis)

  def label(self) -> str:
    return f'data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}'


@dataclasses.dataclass(frozen=True)
class Estimate:
  mesh: Mesh
  accum: int             # micro-batches a step (train.grad_accum_steps)
  micro_batch: int       # sequences a device holds at once
  state_bytes: float     # params + grads + 2 optimizer moments, this device's share
  activation_bytes: float
  remat_activation_bytes: float  # what they would be with every layer rematerialised
  memory_bytes: float
  grad_bytes: float      # gradient reduction, bytes this device sends a step
  gather_bytes: float    # FSDP weight all-gathers, a step
  tensor_bytes: float    # tensor-parallel activation all-reduces, a step
  compute_s: float
  comm_s: float

  @property
  def step_s(self) -> float:
    """Compute plus communication, none of it overlapped: an upper bound at peak."""
    return self.compute_s + self.comm_s


def estimate(cluster: Cluster, work: Workload, mesh: Mesh, params: list[Param], model_cfg,
             accum: int = 1) -> Estimate:
  """Per-device, per-step figures for `work` on `cluster` laid out as `mesh`."""
  d, layers = model_cfg.hidden_size, model_cfg.num_layers
  s, vocab, t = work.seq_len, model_cfg.vocab_size, mesh.tensor
  batch_shards = mesh.data * mesh.fsdp
  micro = work.batch // batch_shards // accum
  shard = lambda p: math.prod(mesh.size(a) for a in p.mesh_axes)
  state = 4 * F32 * sum(p.size / shard(p) for p in params)  # params, grads, mu, nu
  # FSDP holds the gathered weights of the layer it runs and of the next (prefetch).
  # Accumulating (steps.accumulate), each device gathers the whole model once a step,
  # holds it for all micro-batches, and sums full-size gradients before one reduction.
  whole = sum(p.size / (t if 'tensor' in p.mesh_axes else 1) for p in params) * F32
  layer_params = sum(p.size for p in params) / (layers + 2)
  if mesh.fsdp == 1:
    gathered = 0.0
  elif accum > 1:
    gathered = 2 * whole  # the gathered weights and the unreduced gradient sum
  else:
    gathered = 2 * layer_params * F32 / t
  # Korthikanti et al. 2022, 16-bit activations a layer: s*b*h*(10 + 24/t + 5*a*s/(h*t));
  # flash attention (cudnn/splash, what launch/ uses) keeps no s*s scores: drop 5as/ht.
  # Rematerialised, a layer keeps only its bf16 input, and one layer is live in full.
  per_layer = s * micro * d * (10 + 24 / t)
  # MLM logits at the masked positions: bf16 logits plus float32 log-softmax.
  head = micro * work.max_predictions * vocab * (BF16 + F32) / t
  activations = per_layer * layers + head
  remat_activations = 2 * s * micro * d * layers + per_layer + head

  grad = gathers = 0.0
  comm = 0.0
  for p in params:
    local = p.size * F32 / (t if 'tensor' in p.mesh_axes else 1)
    if 'fsdp' in p.mesh_axes:
      grad += gather(local, mesh.fsdp) + all_reduce(local / mesh.fsdp, mesh.data)
      comm += (collective_seconds(cluster, gather, local, mesh.fsdp, t)
               + collective_seconds(cluster, all_reduce, local / mesh.fsdp, mesh.data,
                                    mesh.fsdp * t))
      # Without accumulation forward and backward each gather the weights; with it
      # they are gathered once a step, before the micro-batches.
      passes = 1 if accum > 1 else 2
      gathers += passes * gather(local, mesh.fsdp)
      comm += passes * collective_seconds(cluster, gather, local, mesh.fsdp, t)
    else:
      grad += all_reduce(local, batch_shards)
      comm += collective_seconds(cluster, all_reduce, local, batch_shards, t)
  if mesh.fsdp > 1:
    comm += (1 if accum > 1 else 2) * layers * LATENCY  # a gather a layer, each pass
  # Megatron-style tensor parallelism: 2 all-reduces of (tokens x d) a layer forward, 2
  # backward, and 2 for the vocabulary-sharded embedding and MLM head.
  tokens = work.batch // batch_shards * s
  tensor = (4 * layers + 2) * all_reduce(tokens * d * BF16, t) if t > 1 else 0.0
  comm += (4 * layers + 2) * collective_seconds(cluster, all_reduce, tokens * d * BF16, t, 1)
  if t > 1:
    comm += (4 * layers + 2) * accum * LATENCY
  flop = flops.train_flops_per_token(model_cfg, s, work.max_predictions)
  compute = flop * work.batch * s / cluster.devices / cluster.peak
  return Estimate(mesh=mesh, accum=accum, micro_batch=micro, state_bytes=state,
                  activation_bytes=activations, remat_activation_bytes=remat_activations,
                  memory_bytes=state + gathered + activations,
                  grad_bytes=grad, gather_bytes=gathers, tensor_bytes=tensor,
                  compute_s=compute, comm_s=comm)


def candidate_meshes(cluster: Cluster, work: Workload) -> list[Mesh]:
  meshes = []
  for tensor in (1, 2, 4, 8):
    if tensor > cluster.max_tensor or cluster.devices % tensor:
      continue
    rest = cluster.devices // tensor
    for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
      mesh = Mesh(rest // fsdp, fsdp, tensor)
      if work.batch % (mesh.data * mesh.fsdp) == 0:
        meshes.append(mesh)
  return meshes


def fitting(cluster: Cluster, work: Workload, mesh: Mesh, params, model_cfg) -> Estimate | None:
  """The estimate with the fewest micro-batches that fits (gradient accumulation trades
  time for memory here; `model.remat`, the "with remat" column, is the other lever)."""
  per_device = work.batch // (mesh.data * mesh.fsdp)
  for accum in (a for a in range(1, per_device + 1) if per_device % a == 0):
    e = estimate(cluster, work, mesh, params, model_cfg, accum)
    if e.memory_bytes <= FIT * cluster.memory:
      return e
  return None


SIMPLER_WITHIN = 1.10  # a mesh with fewer sharded axes wins unless 10% slower


def recommend(cluster: Cluster, work: Workload, params, model_cfg) -> list[Estimate]:
  """Every candidate mesh that fits, fastest first; the first is the recommendation:
  the simplest (fewest model-sharding axes, then fewest micro-batches) of those within
  10% of the fastest, since the estimates are not finer than that."""
  found = sorted((e for m in candidate_meshes(cluster, work)
                  if (e := fitting(cluster, work, m, params, model_cfg))),
                 key=lambda e: e.step_s)
  close = [e for e in found if e.step_s <= SIMPLER_WITHIN * found[0].step_s]
  best = min(close, key=lambda e: ((e.mesh.tensor > 1) + (e.mesh.fsdp > 1), e.accum,
                                   e.step_s))
  return [best] + [e for e in found if e is not best]


def _ms(seconds: float) -> str:
  return f'{seconds * 1e3:.1f}'


def _gb(nbytes: float) -> str:
  return f'{nbytes / GB:.2f}'


def _row(e: Estimate) -> str:
  return (f'| {e.mesh.label()} | {e.accum} | {e.micro_batch} | '
          f'{_gb(e.state_bytes)} | {_gb(e.activation_bytes)} | '
          f'{_gb(e.remat_activation_bytes)} | {_gb(e.memory_bytes)} | '
          f'{_gb(e.grad_bytes)} | {_gb(e.gather_bytes)} | {_gb(e.tensor_bytes)} | '
          f'{_ms(e.compute_s)} | {_ms(e.comm_s)} |')


HEADER = ('| mesh | accum | micro-batch | state GB | activations GB | with remat GB | '
          'memory GB | grad comm GB | FSDP gathers GB | TP comm GB | compute ms | comm ms |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|---|')


def _why(best: Estimate, ranked: list[Estimate], cluster: Cluster) -> str:
  reasons = [f'{_gb(best.memory_bytes)} of {cluster.memory / GB:.0f} GB a device']
  if best.accum > 1:
    reasons.append(f'{best.accum} micro-batches of {best.micro_batch} sequences, the fewest '
                   'that fit')
  if best.mesh.fsdp == best.mesh.tensor == 1:
    reasons.append('the replicated model and optimizer fit, so sharding them would only '
                   'add collectives')
  pure = next((e for e in ranked if e.mesh.fsdp == e.mesh.tensor == 1), None)
  if pure is not None and pure is not best:
    reasons.append(f'plain data parallelism ({pure.mesh.label()}) is estimated at '
                   f'{_ms(pure.step_s)} ms against {_ms(best.step_s)} ms')
  fastest = min(ranked, key=lambda e: e.step_s)
  if fastest is not best:
    reasons.append(f'{fastest.mesh.label()} is estimated at {_ms(fastest.step_s)} ms against '
                   f'{_ms(best.step_s)} ms, within the estimate\'s accuracy')
  ratio = best.comm_s / best.compute_s
  reasons.append(f'communication is {ratio:.2f}x compute: '
                 + ('the step is communication-bound even if XLA overlaps the two; fewer '
                    'devices or a larger batch use the hardware better' if ratio > 1 else
                    'XLA can hide it behind compute'))
  return '; '.join(reasons)


INTRO = """# Scaling BERT-large: communication and memory per step, on paper

Computed by `python -m bertjax.scaling > docs/SCALING.md` (bertjax/scaling.py;
tests/test_scaling.py checks this file is its output and the arithmetic by hand).
Nothing here was measured on these machines: they are estimates for planning a run
and choosing `config.mesh`.

**Model.** {model}

**Batches.** The recipe's (`config_lib.bert_recipe`, after Devlin et al. 2019): 256
sequences of 128 tokens (20 masked) in phase 1, 256 x 512 (80 masked) in phase 2.
LAMB's (You et al. 2020, *Large Batch Optimization for Deep Learning: Training BERT in
76 minutes*, arXiv:1904.00962): 65,536 x 128 and 32,768 x 512. FLOPs a step are
`bertjax.flops.train_flops_per_token` times the tokens.

**Hardware, with sources.**
- H100 SXM: 989 TFLOP/s dense bf16, 80 GB HBM3, NVLink 4 at 900 GB/s a GPU both
  directions together (450 GB/s each way) through NVSwitch (NVIDIA H100 Tensor Core GPU
  datasheet, nvidia.com/en-us/data-center/h100). Across hosts, a DGX H100 has eight
  400 Gb/s ConnectX-7 InfiniBand ports for the compute fabric, one a GPU: 50 GB/s each
  way a GPU (NVIDIA DGX H100 user guide, docs.nvidia.com/dgx/dgxh100-user-guide).
- TPU v5p: 459 TFLOP/s bf16, 95 GB HBM2e, inter-chip interconnect 4,800 Gb/s a chip
  (600 GB/s) over six links of a 3D torus (Google Cloud TPU v5p documentation,
  cloud.google.com/tpu/docs/v5p). `v5p-256` counts TensorCores: 128 chips, and JAX shows
  one device a chip (megacore); the default topology is 4x4x8. A collective over one
  torus axis uses that axis's two links (200 GB/s a chip), over two axes four, over the
  whole slice all six. Should the 4,800 Gb/s count both directions, halve the TPU
  communication times.

**How it is costed.**
- State: float32 parameters, gradients and two optimizer moments (AdamW and LAMB alike),
  16 bytes a parameter, divided by the mesh axes each weight is sharded on under
  `sharding.DEFAULT_RULES` ('embed' on fsdp; 'vocab', 'heads', 'mlp' on tensor).
  FSDP adds the gathered weights of two layers (the one running and the next); with
  gradient accumulation it adds the whole gathered model and a full-size gradient sum
  instead (`steps.accumulate` gathers once a step and reduces once after the loop).
- Activations: Korthikanti et al. 2022 (*Reducing Activation Recomputation in Large
  Transformer Models*, arXiv:2205.05198), 16-bit, per layer s*b*h*(10 + 24/t) bytes for
  sequence length s, micro-batch b, width h and tensor-parallel degree t, without the
  5*a*s/h attention-score term because the launch scripts use flash attention (cudnn on
  GPU, splash on TPU; `model.attention=xla` keeps the scores), plus the MLM logits at the
  masked positions (bf16 and a float32 log-softmax). "with remat" is what every layer
  rematerialised would keep (its bf16 input, and one layer in full; `model.remat=full`);
  the recommendations fit memory with `train.grad_accum_steps` and leave remat off.
- Communication, bytes each device sends a step, as bandwidth-optimal rings: an
  all-reduce of S over n devices 2(n-1)/n*S, a reduce-scatter or all-gather (n-1)/n*S.
  Gradients (float32, reduced once a step whatever the accumulation): all-reduced over
  data x fsdp, or for weights sharded on fsdp reduce-scattered over fsdp and all-reduced
  over data (ZeRO-3, Rajbhandari et al. 2020). FSDP all-gathers every weight forward
  and backward without accumulation, and once a step (before the micro-batches) with it.
  Tensor parallelism all-reduces the (tokens x width) activations twice a layer forward
  and twice backward (Megatron-LM), plus twice for the vocabulary-sharded embedding and
  head. A group spanning hosts goes hierarchically: inside the host over NVLink, then
  the 1/8 share across InfiniBand. Mesh axes are laid out data, fsdp, tensor, tensor
  fastest, so tensor and fsdp stay inside a host while they fit. Each per-layer
  collective (FSDP gathers, tensor all-reduces) also costs {latency:.0f} us of start-up.
- Times are at peak: compute = FLOPs / peak, comm = the sum of the collectives at link
  bandwidth. Real steps run slower (MFU below 1); the ratio of the two says whether
  a step is bound by its collectives.
- Recommendation: among the meshes that fit in {fit:.0f}% of device memory with the
  fewest micro-batches, the simplest (fewest model-sharding axes) of those within
  {simpler:.0f}% of the fastest compute + communication. Each table shows it first,
  then the next fastest, and plain data parallelism. "micro-batch" is the sequences
  a data shard holds at once (the devices of a tensor group share them).
"""


def report(top: int = 3) -> str:
  params, model_cfg = bert_params()
  n = sum(p.size for p in params)
  model = (f'BERT-large as bertjax builds it for pre-training (encoder, pooler, MLM and NSP '
           f'heads): {n:,} parameters, {n * F32 / GB:.2f} GB in float32, '
           f'{n * 4 * F32 / GB:.2f} GB with gradients and two optimizer moments; '
           f'{model_cfg.num_layers} layers, width {model_cfg.hidden_size}, '
           f'{model_cfg.num_heads} heads, vocabulary {model_cfg.vocab_size} (padded to '
           f'{model_cfg.padded_vocab_size} rows).')
  out = [INTRO.format(model=model, latency=LATENCY * 1e6, fit=FIT * 100,
                      simpler=(SIMPLER_WITHIN - 1) * 100)]
  for cluster in (H100_CLUSTER, V5P_256):
    out += [f'## {cluster.name}', '']
    for work in WORKLOADS:
      ranked = recommend(cluster, work, params, model_cfg)
      pure = fitting(cluster, work, Mesh(cluster.devices, 1, 1), params, model_cfg)
      best = ranked[0]
      flop = flops.train_flops_per_token(model_cfg, work.seq_len, work.max_predictions)
      out += [f'### {work.name}: {work.batch:,} x {work.seq_len} '
              f'({work.max_predictions} masked), '
              f'{flop * work.batch * work.seq_len / 1e15:.2f} PFLOP a step', '',
              f'Recommended: `--config.mesh.data={best.mesh.data} '
              f'--config.mesh.fsdp={best.mesh.fsdp} --config.mesh.tensor={best.mesh.tensor}'
              + (f' --config.train.grad_accum_steps={best.accum}' if best.accum > 1 else '')
              + '`: ' + _why(best, ranked, cluster) + '.', '', HEADER]
      shown = ranked[:top] + [e for e in (pure,) if e and e not in ranked[:top]]
      out += [_row(e) for e in shown] + ['']
  return '\n'.join(out)


if __name__ == '__main__':
  print(report(), end='')
