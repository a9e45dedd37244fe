#!/usr/bin/env bash
# The GPU check of issue 14, most important first, in about 8 minutes on one H200:
#   1. the cuDNN attention parity test
#   2. BERT-base 256 x 128 bf16 (cuDNN) beside transformers' PyTorch eager, interleaved
#   3. the quickstart trained in bf16 with cuDNN attention (held-out MLM accuracy)
#   4. the ablation, in two halves, and a profile of the base step between them
#   5. BERT-large at 64 x 512, compiled only: XLA's memory analysis
# Each step is capped with `timeout`; a step whose cap no longer fits in the budget
# is skipped and marked so. Figures go to $OUT (the device machine's return folder),
# one file a step; a short table of all steps is printed last.
#
# Run from the project's root, with the wheels GPU.md names in .devwheels/:
#   bash launch/gpu_check.sh [--budget SECONDS]   (default 480)
#   bash launch/gpu_check.sh --dry-run            (prints the steps, runs nothing)
set -uo pipefail

DRY_RUN=0
BUDGET=480
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --dry-run or --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done

OUT="${OUT:-$PWD/gpu_check_out}"
BASE='experiments/bench.py:model=base,batch=256,seq_len=128,dtype=bfloat16,attention=cudnn'
LARGE_512='experiments/bench.py:model=large,batch=64,seq_len=512,dtype=bfloat16,attention=cudnn'
QUICKSTART_DIR=/tmp/gpu_check_quickstart
# The machine cannot reach a package registry: bertjax's missing dependencies travel
# as wheels (../shared/GPU.md), installed apart from the machine's own packages.
# shellcheck disable=SC2016  # $PWD is expanded when the line runs (eval), not here
INSTALL='python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devwheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1'

if [ "$DRY_RUN" = 1 ]; then
  echo "install: $INSTALL"
else
  eval "$INSTALL" || exit
  mkdir -p "$OUT"
  printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"
fi
# Compiled steps are shared between steps (the ablation's full step is the bench's).
export BERTJAX_COMPILATION_CACHE=/tmp/bertjax_gpu_check_cache
# PyTorch shares the GPU with JAX in the peers step.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

# step NAME CAP_SECONDS COMMAND...: stdout to $OUT/NAME.out, stderr to $OUT/NAME.err.
step() {
  local name="$1" cap="$2"
  shift 2
  if [ "$DRY_RUN" = 1 ]; then
    printf 'step %s (cap %ss): %s\n' "$name" "$cap" "$*"
    return
  fi
  local left=$((BUDGET - SECONDS))
  if [ "$cap" -gt "$left" ]; then
    printf '%s\tskipped: cap %ss, %ss of the budget left\t0\n' "$name" "$cap" "$left" \
      >> "$OUT/steps.tsv"
    echo "== $name skipped (cap ${cap}s > ${left}s left)"
    return
  fi
  echo "== $name (cap ${cap}s)"
  local start=$SECONDS status
  timeout "$cap" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  status=$?
  if [ "$status" = 124 ]; then status="timed out"; elif [ "$status" = 0 ]; then status=ok; else status="exit $status"; fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
  tail -n 3 "$OUT/$name.err"
}

step cudnn_parity 120 python3 -m pytest -q -rs tests/test_attention.py -k cudnn
step base_vs_eager 170 python3 -m bertjax bench --config "$BASE" --peers eager \
  --rounds 3 --steps 10 --json
step quickstart_bf16 150 python3 -m bertjax train --config experiments/quickstart.py \
  --workdir "$QUICKSTART_DIR" --config.model.dtype=bfloat16 --config.model.attention=cudnn
if [ "$DRY_RUN" = 0 ] && [ -f "$QUICKSTART_DIR/metrics.jsonl" ]; then
  cp "$QUICKSTART_DIR/metrics.jsonl" "$OUT/quickstart_bf16.metrics.jsonl"
fi
step ablation_stages 150 python3 -m bertjax bench --config "$BASE" \
  --ablate no_dropout,no_optimizer,forward --rounds 3 --steps 10 --json
step profile_base 80 python3 -m bertjax bench --config "$BASE" --steps 10 \
  --profile "$OUT/profile"
step ablation_levers 120 python3 -m bertjax bench --config "$BASE" \
  --ablate threefry_dropout,xla_attention --rounds 3 --steps 10 --json
step large_512_memory 90 python3 -m bertjax bench --config "$LARGE_512" --compile_only --json

if [ "$DRY_RUN" = 1 ]; then
  echo "summary: python3 - \"$OUT\" (a table of the steps and their figures)"
  exit 0
fi
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]

def last_json(name):
  try:
    with open(os.path.join(out, name + '.out')) as f:
      return json.loads(f.read().strip().splitlines()[-1])
  except (OSError, ValueError, IndexError):
    return None

def figure(name):
  data = last_json(name)
  if name == 'cudnn_parity':
    path = os.path.join(out, name + '.out')
    return open(path).read().strip().splitlines()[-1] if os.path.exists(path) else '-'
  if name == 'base_vs_eager' and data:
    rows = {r['system']: r for r in data}
    eager = [r for r in data if r['system'] != 'bertjax' and r['tokens_per_sec']]
    ours = rows['bertjax']['tokens_per_sec']
    return f'bertjax {ours:,.0f} tokens/s' + ''.join(
        f'; {r["system"]} {r["tokens_per_sec"]:,.0f} ({ours / r["tokens_per_sec"]:.2f}x)'
        for r in eager)
  if name == 'quickstart_bf16':
    path = os.path.join(out, name + '.metrics.jsonl')
    if os.path.exists(path):
      records = [json.loads(line) for line in open(path) if line.strip()]
      final = [r for r in records if 'eval_mlm_accuracy' in r]
      if final:
        return f'held-out MLM accuracy {final[-1]["eval_mlm_accuracy"]:.4f}'
  if name.startswith('ablation') and data:
    return '; '.join(f'{r["name"]} {r["step_time"] * 1e3:.1f} ms' if 'step_time' in r
                     else f'{r["name"]} not measured' for r in data['rows'])
  if name == 'profile_base':
    path = os.path.join(out, name + '.out')
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    ops = [l for l in lines if l.startswith('| `')][:3]
    return 'top ops: ' + ', '.join(l.split('|')[1].strip() + l.split('|')[4] for l in ops)
  if name == 'large_512_memory' and data and data['compiled_memory']:
    return f'temp {data["compiled_memory"]["temp"] / 2**30:.2f} GiB'
  return '-'

print('\n| step | status | seconds | figures |\n| --- | --- | ---: | --- |')
with open(os.path.join(out, 'steps.tsv')) as f:
  next(f)
  for line in f:
    name, status, seconds = line.rstrip('\n').split('\t')
    print(f'| {name} | {status} | {seconds} | {figure(name) if status == "ok" else "-"} |')
EOF
