#!/usr/bin/env bash
# Run ON the lent GPU machine (device tool), after benchmarks/gpu_prepare.sh here:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=590)
# or only some steps after the build: `bash benchmarks/gpu_session.sh tests_cuda td_target variant`.
# Everything a GPU session checks, in one call: build with the CUDA kernels, the CUDA tests, the TD
# kernels' parity, time and bandwidth, the paper configuration's loop, then each prepared kernel
# variant. On an H200 the main steps took ~2 minutes and a variant should take ~1 more, well inside
# a 15-minute device budget (the start takes 1-2 of them). Each step has its own time limit (a
# guard: the limits add up to more than one call's 600 s), and every log is written to $OUT (it
# comes back even on a timeout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
# No MUJOCO_GL=egl: the build imports mujoco to find its headers, and with it set that import
# loads PyOpenGL's EGL, which fails there (no libEGL: the build stopped in 10 s).
export PYTHONUNBUFFERED=1
STEPS=" $* "
SITE=/tmp/site
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, report rc and time
  local name=$1 limit=$2; shift 2
  [[ "$STEPS" == "  " || "$STEPS" == *" $name "* || "$STEPS" == *" ${name%%_*} "* ||
     $name == build ]] || return 0
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"; tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/wheels/*.whl || exit 1
cp -r .gpu/site/dm_control "$SITE"/
export PYTHONPATH=$SITE
# The build: --no-deps (the image's torch is 2.11; pyproject pins 2.13 for the CPU wheel).
step build 240 python3 -m pip install --no-build-isolation --no-deps --target "$SITE" . \
  -Ccmake.define.MTRL_WITH_CUDA=ON -Ccmake.define.MTRL_CUDA_ARCHITECTURES=90
python3 -P -c "import mtrl; assert mtrl.cuda_available(), 'no usable CUDA build/device'" || exit 1
# Sequential, so nothing else shares the GPU while a step is timed. -P: `python -m pytest` would
# put the repository root first on sys.path, whose mtrl/ has no _core. The limits are guards: on
# an H200 the build took 25 s, the CUDA tests 31, the TD table 13 and the paper loop 51.
step tests_cuda 120 python3 -P -m pytest -q -m cuda -p no:cacheprovider tests/
step td_target 110 python3 -P benchmarks/gpu_td_target.py
step train_paper 110 python3 -P benchmarks/bench_train.py --paper --quick
# Kernel variants prepared without a GPU (benchmarks/gpu_variants/*.patch): each is applied to a
# copy of the tree, built, checked by the CUDA TD tests and timed by gpu_td_target.py --quick, after
# main's table above. One that passes and is faster is for `git apply` and a commit.
for patch in benchmarks/gpu_variants/*.patch; do
  [[ -e $patch && ( "$STEPS" == "  " || "$STEPS" == *" variant "* ) ]] || continue
  name=variant_$(basename "$patch" .patch) tree=/tmp/variant_tree site=/tmp/variant_site
  rm -rf "$tree" "$site" && mkdir -p "$tree" &&
    tar --exclude=./build --exclude=./.gpu --exclude=./.git -cf - . | tar -xf - -C "$tree" &&
    { git -C "$tree" apply "$PWD/$patch" 2>/dev/null || patch -d "$tree" -p1 -s < "$patch"; } ||
    { echo "== $name: the patch does not apply"; continue; }
  step "${name}_build" 240 python3 -m pip install --no-build-isolation --no-deps --target "$site" \
    "$tree" -Ccmake.define.MTRL_WITH_CUDA=ON -Ccmake.define.MTRL_CUDA_ARCHITECTURES=90
  # Without its build, PYTHONPATH below would fall through to main's mtrl in $SITE.
  [[ -d $site/mtrl ]] || { echo "== $name: not built, so not tested or timed"; continue; }
  step "${name}_tests" 120 env PYTHONPATH="$site:$SITE" python3 -P -m pytest -q -m cuda \
    -p no:cacheprovider "$tree/tests/test_td_target_cuda.py"
  step "${name}_td" 60 env PYTHONPATH="$site:$SITE" python3 -P "$tree/benchmarks/gpu_td_target.py" \
    --quick
done
