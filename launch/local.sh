#!/usr/bin/env bash
# Rehearse a pod run on this machine: 8 fake CPU devices, the experiment's :local
# variant, FSDP over all of them.
#   launch/local.sh experiments/bert_base.py /tmp/rehearsal [--config.x=y ...]
set -euo pipefail
config=${1:?usage: launch/local.sh EXPERIMENT.py WORKDIR [flags]}
workdir=${2:?usage: launch/local.sh EXPERIMENT.py WORKDIR [flags]}
shift 2
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
export JAX_PLATFORMS=cpu
exec bertjax train --config "${config}:local" --workdir "$workdir" \
  --config.mesh.data=1 --config.mesh.fsdp=8 "$@"
