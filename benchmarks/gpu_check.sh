#!/usr/bin/env bash
# The GPU check of issue 12, one script, under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# From the repository root, on the GPU machine. Installs what the machine lacks from wheels
# carried in .whl/ (pyro-ppl and pyro-api; see README's GPU section), then runs
#   1. the CUDA tests (tests/test_precision.py and the CUDA test of tests/test_contract.py),
#   2. benchmarks/speed.py on cuda: tab16, tab64, glow32; pyro-flows in fp32 and bf16-mixed and
#      Pyro's fp32 flow; eager and torch.compile(mode="reduce-overhead"),
#   3. a short digits Glow fit on cuda in fp32 and bf16-mixed, checked against the same fit on
#      the CPU (benchmarks/gpu_fit_check.py),
# and writes everything to one file, DIR/gpu_check.txt (DIR: --out, else $OUT, else
# ./gpu_check_out). Each step has its own time limit (30 + 90 + 110 + 150 + 80 s: 7.7 min at
# most), so one that hangs cannot take the rest. Exit status 1 if any step failed.
#
# --dry-run runs the same steps on the CPU, small, in seconds (CI runs it: tests/test_gpu_check.py).
set -u -o pipefail

DRY=0
DIR="${OUT:-gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) DIR="$2"; shift ;;
    *) echo "unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$DIR"
RESULT="$DIR/gpu_check.txt"
PY="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
: > "$RESULT"
STATUS=0

section() { printf '\n## %s\n\n' "$1" >> "$RESULT"; }
# step LIMIT_SECONDS COMMAND...: run, append its output, remember a failure.
step() {
  local limit=$1; shift
  echo "\$ $*" >> "$RESULT"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$RESULT" 2>&1
  local rc=$?
  echo "(exit $rc, $((SECONDS - t0)) s)" >> "$RESULT"
  [ $rc -eq 0 ] || STATUS=1
}

section "environment"
if [ $DRY -eq 0 ]; then
  if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl >> "$RESULT" 2>&1 || { echo "wheel install failed" >> "$RESULT"; exit 1; }
    export PYTHONPATH="/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi
  DEVICE=cuda
else
  echo "dry run: CPU path, small sizes" >> "$RESULT"
  DEVICE=cpu
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
step 30 "$PY" -c "import torch, pyro, pyro_flows; print('torch', torch.__version__, 'pyro', pyro.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if [ $DRY -eq 0 ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$RESULT" 2>&1
fi
git rev-parse HEAD >> "$RESULT" 2>&1

section "tests"
if [ $DRY -eq 0 ]; then
  step 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_contract.py tests/test_nn.py -k "cuda or precision or bf16"
else
  step 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py -k "names or full_precision"
fi

section "speed"
if [ $DRY -eq 0 ]; then
  SPEED=(--device cuda --threads 4 --workloads tab16,tab64,glow32 --contenders pyro-flows,pyro-flows-bf16,pyro --rounds 5 --block 0.2 --no-memory)
  step 110 "$PY" benchmarks/speed.py "${SPEED[@]}" --json "$DIR/speed_eager.json"
  step 150 "$PY" benchmarks/speed.py "${SPEED[@]}" --compile --json "$DIR/speed_compile.json"
else
  step 60 "$PY" benchmarks/speed.py --device cpu --threads 1 --workloads tab16 --contenders pyro-flows,pyro-flows-bf16 --rounds 1 --block 0.01 --no-memory --json "$DIR/speed_eager.json"
  echo "torch.compile(mode=\"reduce-overhead\") run: skipped in the dry run (compilation takes minutes on a CPU)" >> "$RESULT"
fi

section "digits fit"
if [ $DRY -eq 0 ]; then
  step 80 "$PY" benchmarks/gpu_fit_check.py --devices cpu,cuda --precisions fp32,bf16-mixed --epochs 3 --json "$DIR/fit.json"
else
  step 60 "$PY" benchmarks/gpu_fit_check.py --devices cpu --precisions fp32,bf16-mixed --epochs 1 --train 128 --tolerance 0.05 --json "$DIR/fit.json"
fi

section "summary"
echo "device $DEVICE; status $([ $STATUS -eq 0 ] && echo OK || echo 'FAILED (see the exit codes above)')" >> "$RESULT"
echo "results in $RESULT"
exit $STATUS
