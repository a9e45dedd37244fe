#!/usr/bin/env bash
# Rehearse a pod run on this machine: 8 fake CPU devices, the experiment's :local
# variant, FSDP over all of them.
#   launch/local.sh [--dry-run] experiments/bert_base.py /tmp/rehearsal [--config.x=y ...]
# --dry-run prints the command (shell-quoted) instead of running it.
set -euo pipefail
usage='usage: launch/local.sh [--dry-run] EXPERIMENT.py WORKDIR [flags]'
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
command=(bertjax train --config "${config}:local" --workdir "$workdir"
         --config.mesh.data=1 --config.mesh.fsdp=8 --expect_devices=8 "$@")
if [ "$dry_run" = 1 ]; then printf '%q ' "${command[@]}"; echo; exit 0; fi
exec "${command[@]}"
