#!/usr/bin/env bash
# On a machine with a CUDA GPU: build mtrl with the CUDA kernels, run the GPU parity tests, then
# time the fused TD-target kernels (benchmarks/gpu_td_target.py; its last line is RESULT {json}).
# Needs torch with CUDA, nvcc (sm_75+), CMake, Ninja; pass extra flags to the Python script, e.g.
#   benchmarks/gpu_td_target.sh --quick
# MTRL_CUDA_ARCHITECTURES (default "80;90") selects the GPU architectures to compile.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ARCHS=${MTRL_CUDA_ARCHITECTURES:-80;90}

"$PYTHON" -m pip install --no-build-isolation -q scikit-build-core pybind11 "mujoco==3.17.0"
"$PYTHON" -m pip install --no-build-isolation --no-deps -q -e . \
  -Ccmake.define.MTRL_CUDA_ARCHITECTURES="$ARCHS" -Ccmake.define.MTRL_WITH_CUDA=ON
"$PYTHON" - <<'PY'
import torch, mtrl
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else None)
if not mtrl.cuda_available():
    raise SystemExit(f"mtrl.cuda_built()={mtrl.cuda_built()}: no usable CUDA build/device")
PY
"$PYTHON" -m pytest -q tests/test_td_target_cuda.py
"$PYTHON" benchmarks/gpu_td_target.py "$@"
