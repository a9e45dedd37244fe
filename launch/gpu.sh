#!/usr/bin/env bash
# One GPU host (all its GPUs in one process): bfloat16 compute, cuDNN flash attention.
#   launch/gpu.sh [--dry-run] experiments/bert_base.py /data/runs/base [--config.x=y ...]
# --dry-run prints the command (shell-quoted) instead of running it.
set -euo pipefail
usage='usage: launch/gpu.sh [--dry-run] EXPERIMENT.py WORKDIR [flags]'
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
# Let XLA overlap collectives with compute, and take GPU memory up front.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
command=(bertjax train --config "$config" --workdir "$workdir"
         --config.model.dtype=bfloat16 --config.model.attention=cudnn
         --config.model.attention_dropout_rate=0 "$@")
if [ "$dry_run" = 1 ]; then printf '%q ' "${command[@]}"; echo; exit 0; fi
exec "${command[@]}"
