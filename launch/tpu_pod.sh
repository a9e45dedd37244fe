#!/usr/bin/env bash
# Run an experiment on every worker of a Cloud TPU VM pod slice. The same command runs
# on each host; jax.distributed autodetects the pod, each host feeds its own shard.
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/bert_base.py gs://bucket/run [--config.x=y ...]
# The workdir must be on storage every host sees (a gs:// bucket). Preemption sends
# SIGTERM: bertjax checkpoints and exits; re-run this script to resume.
set -euo pipefail
tpu=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE EXPERIMENT.py WORKDIR [flags]}
zone=${2:?zone}; config=${3:?experiment file}; workdir=${4:?workdir}
shift 4
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$repo" "$tpu":~/bertjax
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; cd ~/bertjax
  python3 -m venv ~/.venv-bertjax && . ~/.venv-bertjax/bin/activate
  pip install -q -e '.[tpu]'
  bertjax train --config '$config' --workdir '$workdir' --config.model.dtype=bfloat16 $*
"
