#!/usr/bin/env bash
# The one prepared GPU run of issue 16 item 5 (bench_train and bench_data on an H100/H200:
# ResNet-50 at 224 px, bf16 autocast, channels_last, from prepared arrays, with and without
# torch.compile). Made for the device tool: first, here, `bash bench/device_wheels.sh`; then
#   run(command="bash bench/device_run.sh", carry=[".whl"], timeout_s=540)
# Figures land in $OUT (the device tool's folder) or bench-output/, one JSON per benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-output}; mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/device.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' \
  | tee -a "$out/device.txt"
train=(--device cuda --network resnet50 --image-size 224 --batch 256 --cases 6144 --epochs 3
       --steps 30 --workers 8 --json)
timeout 150 python3 -m bench.bench_train "${train[@]}" > "$out/train.json"; echo "train rc=$?"
timeout 240 python3 -m bench.bench_train "${train[@]}" --compile > "$out/train_compile.json"
echo "train --compile rc=$?"
timeout 120 python3 -m bench.bench_data --device cuda --cases 2000 --size 512 --image-size 224 \
  --batch 256 --workers 8 --json > "$out/data.json"; echo "data rc=$?"
for f in "$out"/*.json; do echo "== $f"; cat "$f"; done
