#!/usr/bin/env bash
# Every GPU measurement of the speed and training pages in one pass, each step capped in
# time so that a slow step cannot starve the others; a step's table lands in its own
# folder under OUTPUT_DIR as soon as it finishes, with its log beside it.
#
#   bash tools/gpu_benchmarks.sh output/gpu            # python from $PYTHON, else python3
#   ITERS=2000 TRAIN_CAP=900 bash tools/gpu_benchmarks.sh output/gpu
#
# Steps (seconds of cap): the effdet-vs-ours training comparison (SEEDS, default 0 1 2;
# ITERS, default 500, where the CPU page has 2000; TRAIN_CAP, default 215), the
# EfficientDet race in fp32 and AMP (110), D0 batch 1 compiled with CUDA graphs (110), the
# neck race (45), the stage profile (35), activation checkpointing of D3 at batch 8 (30):
# about 10 minutes on one H100 with the defaults. docs/speed.md lists the steps.
set -u
OUTPUT_DIR=${1:?usage: bash tools/gpu_benchmarks.sh OUTPUT_DIR}
PY=${PYTHON:-python3}
ITERS=${ITERS:-500}
SEEDS=${SEEDS:-0 1 2}
TRAIN_CAP=${TRAIN_CAP:-215}
cd "$(dirname "$0")/.."
mkdir -p "$OUTPUT_DIR"
START=$(date +%s)
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUTPUT_DIR/gpu_benchmarks.log"; }

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: these are GPU benchmarks')" \
  || exit 1

step() {  # step CAP NAME COMMAND...
  local cap=$1 name=$2
  shift 2
  say "start $name (cap ${cap} s)"
  timeout -k 5 "$cap" "$@" > "$OUTPUT_DIR/$name.log" 2>&1
  local status=$?
  [ $status -eq 124 ] && say "$name ran past its cap of ${cap} s" || say "end $name (exit $status)"
}

# shellcheck disable=SC2086  # SEEDS is a list
step "$TRAIN_CAP" effdet_training "$PY" tools/compare_effdet_training.py --seeds $SEEDS --iters "$ITERS" --jobs 6 \
  --threads 2 --output-dir "$OUTPUT_DIR/effdet_training" MODEL.DEVICE cuda
step 110 race_cuda "$PY" tools/efficientdet_race.py race --device cuda --precisions fp32 amp --variants D0 D3 \
  --batch-sizes 1 8 --repeats 10 --warmup 3 --output-dir "$OUTPUT_DIR/race_cuda"
step 110 race_cuda_compiled "$PY" tools/efficientdet_race.py race --device cuda --precisions fp32 --variants D0 \
  --batch-sizes 1 --repeats 10 --warmup 3 --compiled --compile-mode reduce-overhead \
  --output-dir "$OUTPUT_DIR/race_cuda_compiled"
step 45 neck_race_cuda "$PY" tools/neck_race.py --device cuda --batch-sizes 1 8 --repeats 10 --warmup 3 \
  --output-dir "$OUTPUT_DIR/neck_race_cuda"
step 35 profile_cuda "$PY" tools/profile_model.py --device cuda --variant D0 --batch-sizes 1 8 --repeats 10 \
  --warmup 3 --output-dir "$OUTPUT_DIR/profile_cuda"
step 30 checkpointing_cuda "$PY" tools/benchmark_checkpointing.py \
  --config-file configs/EfficientDet/EfficientDet-D3.yaml --device cuda --batch-sizes 8 --repeats 5 --warmup 2 \
  --output-dir "$OUTPUT_DIR/checkpointing_cuda" --output-name d3_batch8
say "done: $OUTPUT_DIR"
