#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md, one step per command (each planned well under 10 minutes on one H100),
# run from the repository root of a checkout on a GPU machine, without installing the package:
#
#   RESNETS_DATA=$PWD/.data bash benchmarks/gpu.sh STEP [OUT_DIR]
#
# STEP: tests | cifar | fmnist | fmnist-recipes | schedule | r50 | jpeg | inference | detection. Results (JSON, logs, the
# wall time of whole commands) go to OUT_DIR (default $OUT, else benchmarks/results/gpu). RESNETS_DATA must
# hold fashion-mnist/ with the four IDX files for the Fashion-MNIST steps.
set -euo pipefail
step=${1:?usage: gpu.sh tests|cifar|fmnist|fmnist-recipes|schedule|r50|jpeg|inference|detection [OUT_DIR]}
out=${2:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || true
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" >>"$out/gpu.txt"

timed() {  # timed NAME COMMAND...: the whole command's wall time in OUT/NAME.time, its output in OUT/NAME.log
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" 2>&1 | tee "$out/$name.log"
  t1=$(date +%s.%N)
  echo "$name: $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s" | tee "$out/$name.time"
}

case $step in
tests) # the CUDA-only tests (the whole suite is for CI's CPU)
  $py -m pytest -q -m cuda -p no:cacheprovider 2>&1 | tee "$out/tests.log" ;;
cifar) # target 5: the engine's iterations/s per CIFAR net against a captured whole-step graph
  $py benchmarks/train_throughput.py --case cifar-nets --device cuda --runs 3 --json "$out/cifar_nets.json" ;;
fmnist) # target 4: Fashion-MNIST throughput against the plain loop and the engine's host-loader path
  $py benchmarks/train_throughput.py --case fashion-mnist --device cuda --runs 3 --json "$out/fashion_mnist.json" ;;
fmnist-recipes) # target 4: time to accuracy, the whole command
  timed fashion-mnist-gpu $py -m resnets train --recipe fashion-mnist-gpu --out "$out/runs" --name fm-gpu --no-progress
  timed fashion-mnist-gpu-long $py -m resnets train --recipe fashion-mnist-gpu-long --out "$out/runs" --name fm-gpu-long --no-progress ;;
schedule) # target 5: a 64,000-iteration ResNet-20 run, the paper's schedule, whole command
  timed resnet20-64k $py -m resnets train --recipe paper-cifar --dataset fashion-mnist --model resnet20 \
    --curve-steps 0 --out "$out/runs" --name r20-64k --no-progress ;;
r50) # target 2: ResNet-50 on GPU-resident synthetic data against a hand-written compiled loop
  $py benchmarks/train_throughput.py --case resnet50-synthetic --device cuda --runs 3 --json "$out/resnet50_synthetic.json" ;;
jpeg) # target 1: ResNet-50 on 10,240 JPEGs (nvJPEG) against torchvision's ImageFolder + DataLoader(16 workers);
  # issue 25: the same JPEGs also from tar shards (resnets_shards_img_s, shards_vs_folder)
  $py benchmarks/train_throughput.py --case resnet50-jpeg --device cuda --runs 2 --images 10240 --workers 16 \
    --shards --json "$out/resnet50_jpeg.json" ;;
inference) # target 3: bench at bf16 against torchvision compiled, and predict over 10,240 JPEGs
  $py benchmarks/inference_speed.py --device cuda --precision bf16 --batch 256 --skip int8 --runs 3 \
    --predict-images 10240 --predict-backend eager --predict-size 375x500 --predict-batch 256 --predict-workers 16 \
    --json "$out/inference_bf16.json"
  $py -m resnets bench resnet50 --device cuda --precision bf16 --batch-sizes 256 --backend all --json >"$out/bench_bf16.json" ;;
detection) # issue 24: Faster R-CNN (resnet18 FPN) on a 4,000-image shapes set at 512 px, our engine against
  # torchvision's reference loop; then the README's detection command as written
  $py benchmarks/detection.py --epochs 12 --train 4000 --val 500 --size 512 --device cuda --json "$out/detection.json"
  $py -m resnets data shapes --out "$out/shapes" --no-progress
  timed finetune-detection $py -m resnets train --recipe finetune-detection --data "$out/shapes" --name shapes-det \
    --out "$out/runs" --backbone resnet18 --min-size 128 --max-size 128 --box-batch-size-per-image 64 --no-progress ;;
*)
  echo "unknown step $step" >&2
  exit 2 ;;
esac
