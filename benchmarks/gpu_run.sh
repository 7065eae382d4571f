#!/usr/bin/env bash
# One batched GPU run for issue 3: the `gpu` kernel tests, then the attention-level benchmark (benchmarks/kernels.py).
# Usage (repository root or anywhere):  OUT=/some/dir bash benchmarks/gpu_run.sh
# Writes $OUT/gpu_tests.txt, $OUT/kernels.json (rewritten after every section), $OUT/kernels_log.txt; prints a short
# table last. Budget: ~8 minutes on one H200 (tests ~2-3 min, mostly Triton compiles; benchmark <= BENCH_BUDGET_S).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python}
mkdir -p "$OUT"
unset TRITON_INTERPRET
start=$(date +%s)

echo "== pytest -m gpu tests/kernels"
if $PY -c "import pytest" 2>/dev/null; then
  timeout 300 $PY -m pytest -m gpu tests/kernels -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.txt"
  test_rc=${PIPESTATUS[0]}
else
  echo "pytest is not installed: tests skipped" | tee "$OUT/gpu_tests.txt"
  test_rc=2
fi

elapsed=$(( $(date +%s) - start ))
budget=${BENCH_BUDGET_S:-$(( 450 - elapsed ))}
[ "$budget" -lt 120 ] && budget=120
echo "== benchmarks/kernels.py (budget ${budget} s)"
timeout $(( budget + 60 )) $PY benchmarks/kernels.py --out "$OUT/kernels.json" --budget-s "$budget" 2>&1 \
  | tee "$OUT/kernels_log.txt"
bench_rc=${PIPESTATUS[0]}

echo
echo "== summary ($(( $(date +%s) - start )) s; tests rc=$test_rc, benchmark rc=$bench_rc)"
tail -n 1 "$OUT/gpu_tests.txt"
if [ -f "$OUT/kernels.json" ]; then
  $PY benchmarks/kernels.py --table "$OUT/kernels.json"
fi
exit $(( test_rc != 0 || bench_rc != 0 ))
