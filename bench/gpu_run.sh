#!/usr/bin/env bash
# One batch of checks and timings on a GPU machine, everything written under $OUT (default
# ./gpu-out): the adapter report, the tests, `deno task bench --json`, the PyTorch reference
# scripts given, and the comparison table for bench/RESULTS.md.
#
#   source .gpu-bundle/enter.sh && bash bench/gpu_run.sh [--tests "PATHS"] [--bench FILTER] [--backend B] [--torch "SCRIPTS"] [--quick]
set -uo pipefail
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
tests="" filter="" torch="" quick="" backend=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) tests=$2; shift 2 ;;
    --bench) filter=$2; shift 2 ;;
    --torch) torch=$2; shift 2 ;;
    --quick) quick=--quick; shift ;;
    --backend) backend=(--backend "$2"); shift 2 ;;
    *) echo "gpu_run: unknown argument $1" >&2; exit 2 ;;
  esac
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true
# The SM clock follows the load (345-1980 MHz on an H100): log it every 100 ms while this runs.
clock_log=""
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,clocks_event_reasons.active \
    --format=csv -lms 100 > "$OUT/clocks.csv" 2>&1 &
  clock_log=$!
  trap 'kill $clock_log 2> /dev/null' EXIT
fi
deno run -A cli/gpus.ts 2>&1 | grep -v '^Warning: max' | tee "$OUT/adapters.txt"
if [ -n "$tests" ]; then
  # shellcheck disable=SC2086
  deno test -A $tests 2>&1 | grep -v '^Warning: max' > "$OUT/tests.log"
  echo "tests: exit $?"; grep -E "^(ok|FAILED)|passed|failed" "$OUT/tests.log" | tail -5
fi
rows=()
if [ -n "$filter" ]; then
  deno task bench $quick "${backend[@]}" --filter "$filter" --json "$OUT/bench.json" 2> "$OUT/bench.log" | tee "$OUT/bench.txt"
  rows+=("$OUT/bench.json")
fi
i=0
for script in $torch; do
  i=$((i + 1))
  python3 "$script" $quick --json "$OUT/torch$i.json" > /dev/null 2>> "$OUT/torch.log" || echo "torch script $script failed" | tee -a "$OUT/torch.log"
  [ -f "$OUT/torch$i.json" ] && rows+=("$OUT/torch$i.json")
done
if [ ${#rows[@]} -gt 0 ]; then
  deno run -A bench/compare.ts "${rows[@]}" | tee "$OUT/compare.md"
fi
