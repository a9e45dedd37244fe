#!/usr/bin/env bash
# Run an experiment on every worker of a Cloud TPU VM slice. Each run copies this
# checkout (without .git, .venv, runs/, build/) to its own directory on every worker,
# so a re-run, the way to resume, never runs the previous run's code; it installs a
# Python 3.11 environment there with uv and runs the same command on all workers;
# jax.distributed finds the slice through the metadata server. Each worker's output
# goes to runs/tpu_pod/RUN/worker-I.log here.
#   launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE experiments/bert_base.py gs://bucket/run \
#     [--config.x=y ...]
# The workdir must be on storage every host sees (a gs:// bucket). Preemption sends
# SIGTERM: bertjax checkpoints and exits; re-run this script to resume.
# --dry-run prints every command (one a line, shell-quoted) and runs none of them but
# the read-only `gcloud ... describe` that counts the workers.
set -euo pipefail
usage='usage: launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE EXPERIMENT.py WORKDIR [flags]'
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
tpu=${1:?$usage}; zone=${2:?$usage}; config=${3:?$usage}; workdir=${4:?$usage}
shift 4

run() {
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

repo=$(cd "$(dirname "$0")/.." && pwd)
run_id=$(date -u +%Y%m%d-%H%M%S)-$$-$RANDOM
remote_dir=bertjax-runs/$run_id  # under each worker's home directory
bundle=${TMPDIR:-/tmp}/bertjax-$run_id.tgz
log_dir=runs/tpu_pod/$run_id  # runs/ is git-ignored and never copied

# One ipAddress a worker; gcloud's value() joins a list with ';'.
endpoints=$(gcloud compute tpus tpu-vm describe "$tpu" --zone "$zone" \
  --format='value(networkEndpoints[].ipAddress)')
IFS=';' read -r -a workers <<< "$endpoints"
if [ "${#workers[@]}" = 0 ]; then
  echo "launch/tpu_pod.sh: TPU $tpu in zone $zone lists no workers" >&2
  exit 2
fi

run tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./runs \
  --exclude=./build --exclude=./.pytest_cache \
  --exclude=__pycache__ --exclude='*.egg-info' -czf "$bundle" .
run gcloud compute tpus tpu-vm scp "$bundle" "$tpu:bertjax-$run_id.tgz" --zone "$zone" \
  --worker=all

# Every argument is quoted for the remote shell here (printf %q), so flags with spaces
# or quotes arrive as they were typed.
train=$(printf '%q ' .venv/bin/bertjax train --config "$config" --workdir "$workdir" \
  --config.model.dtype=bfloat16 "$@")
# A libtpu lock left by a killed run blocks the TPU; one a live process holds does not
# go (lsof exits 0 only when some process has the file open).
setup="set -euo pipefail
mkdir -p $(printf %q "$remote_dir") && cd $(printf %q "$remote_dir")
tar -xzf ../../bertjax-$run_id.tgz && rm ../../bertjax-$run_id.tgz
if [ -e /tmp/libtpu_lockfile ]; then
  if holders=\$(sudo lsof -t /tmp/libtpu_lockfile); then
    echo \"\$(hostname): the TPU is in use by process(es) \$holders\" >&2; exit 1
  fi
  sudo rm -f /tmp/libtpu_lockfile
fi
export PATH=\$HOME/.local/bin:\$PATH
command -v uv >/dev/null || python3 -m pip install --user --quiet uv
uv venv --quiet --python 3.11 .venv
uv pip install --quiet --python .venv/bin/python '.[tpu]'
exec $train"

run mkdir -p "$log_dir"
pids=()
for i in "${!workers[@]}"; do
  command=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker="$i"
           --command "$setup")
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "${command[@]}"; printf '>%q 2>&1 &\n' "$log_dir/worker-$i.log"
  else
    "${command[@]}" > "$log_dir/worker-$i.log" 2>&1 &
    pids+=("$!")
  fi
done
run rm -f "$bundle"
if [ "$dry_run" = 1 ]; then exit 0; fi
echo "run $run_id on ${#workers[@]} workers of $tpu: logs in $log_dir/"
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "worker $i failed: see $log_dir/worker-$i.log" >&2
    status=1
  fi
done
exit "$status"
