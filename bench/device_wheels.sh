#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels the GPU machine's image lacks for
# bench_train and bench_data, into .whl/ (ignored through .git/info/exclude), so that one
# prepared `run` there (bench/device_run.sh, carry [".whl"]) needs nothing from outside.
# The image has Python 3.12, torch, torchvision, timm, numpy, pillow and matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
mkdir -p .whl
pkgs=(pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0
      typing-inspection==0.4.5 python-dotenv==1.2.4 pydicom==3.0.2 tenacity==9.2.1)
# No DICOM codecs: the benchmarks' synthetic files are uncompressed.
for p in "${pkgs[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$p"
done
du -sh .whl
