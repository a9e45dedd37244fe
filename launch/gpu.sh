#!/usr/bin/env bash
# One GPU host (all its GPUs in one process): bfloat16 compute, cuDNN flash attention.
#   launch/gpu.sh experiments/bert_base.py /data/runs/base [--config.x=y ...]
set -euo pipefail
config=${1:?usage: launch/gpu.sh EXPERIMENT.py WORKDIR [flags]}
workdir=${2:?workdir}
shift 2
# Let XLA overlap collectives with compute, and take GPU memory up front.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec bertjax train --config "$config" --workdir "$workdir" \
  --config.model.dtype=bfloat16 --config.model.attention=cudnn \
  --config.model.attention_dropout_rate=0 "$@"
