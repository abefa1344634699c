#!/usr/bin/env bash
# The one prepared GPU run of issue 16 item 5 (bench_train and bench_data on an H100/H200:
# ResNet-50 at 224 px, bf16 autocast, channels_last, from prepared arrays, with and without
# torch.compile) and of issue 13 item 4 (bench/device_ddp.py: DDP over NCCL). Made for the
# device tool: first, here, `bash bench/device_wheels.sh`; then
#   run(command="bash bench/device_run.sh", carry=[".whl"], timeout_s=590)
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
# Shortest and surest first, torch.compile last: on a fresh machine (no inductor cache)
# its two compilations of ResNet-50 took 100-150 s (2026-12-04: one run of 170 s ended,
# one of 150 s with three compilations did not). A whole run: 400-560 s of the 900 s.
timeout 160 python3 -m bench.device_ddp --json > "$out/ddp.json"; echo "ddp rc=$?"
timeout 110 python3 -m bench.bench_train "${train[@]}" > "$out/train.json"; echo "train rc=$?"
timeout 90 python3 -m bench.bench_data --device cuda --cases 600 --size 512 --image-size 224 \
  --batch 256 --workers 8 --json > "$out/data.json"; echo "data rc=$?"
timeout 200 python3 -m bench.bench_train "${train[@]}" --compile > "$out/train_compile.json"
echo "train --compile rc=$?"
for f in "$out"/*.json; do echo "== $f"; cat "$f"; done
