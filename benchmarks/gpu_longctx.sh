#!/usr/bin/env bash
# Long-context quality past SmolLM2's trained 8K context on one GPU (issue 6, done-means 3 and 4), through the engine's
# Triton path with remapped positions. Usage:  MODEL=/path/smollm2.gguf OUT=/some/dir bash benchmarks/gpu_longctx.sh PART
# PART: passkey (32K/128K/1M passkey, dense beside it up to 128K) | tasks (needle + variable tracking at 32K/128K) |
#       sweep (the default knobs against their neighbours at 32K). Each run writes its JSON (+ PNG) under $OUT as it goes.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
MODEL=${MODEL:?path of the SmolLM2 GGUF}
mkdir -p "$OUT"
unset TRITON_INTERPRET
common=(--model "$MODEL" --device cuda --dtype bfloat16 --positions remap --no-default-variants
        --max-num-batched-tokens 32768)
run() {  # name, timeout seconds, flags...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T))"
  timeout "$limit" python benchmarks/longctx.py "${common[@]}" "$@" --out "$OUT/$name.json" 2>&1 | tail -n 25
}
case ${1:-passkey} in
  passkey)
    run passkey-32k 120 --tasks passkey --lengths 32k --attention both --depths 0,25,50,75,100 --samples 4 \
      --max-concurrent 20
    run passkey-128k 170 --tasks passkey --lengths 128k --attention both --dense-up-to 128k \
      --depths 0,25,50,75,100 --samples 2 --max-concurrent 10
    run passkey-1m 240 --tasks passkey --lengths 1M --attention msa --depths 0,25,50,75,100 --samples 2 \
      --max-concurrent 2
    ;;
  tasks)
    run tasks-32k-128k 420 --tasks needle_single,needle_multikey,variable_tracking --lengths 32k,128k \
      --attention both --dense-up-to 128k --depths 0,25,50,75,100 --samples 2 --max-concurrent 10
    ;;
  sweep)
    run sweep-32k 480 --tasks passkey,needle_single,variable_tracking --lengths 32k --attention msa \
      --depths 0,25,50,75,100 --samples 2 --max-concurrent 16 \
      --variant k16:topk_blocks=16 --variant k64:topk_blocks=64 --variant w8:window_blocks=8 \
      --variant w32:window_blocks=32 --variant mean:score=mean --variant s32:block_size=32,window_blocks=32,topk_blocks=64 \
      --variant s128:block_size=128,window_blocks=8,topk_blocks=16 --variant auto:positions=auto \
      --variant dl01:dense_layers=0,1
    ;;
esac
