#!/usr/bin/env bash
# Run HERE (the CPU sandbox with network) before a session's one device call: fills the ignored
# folder .gpu/ with what the lent GPU machine lacks and cannot download (it has no network).
#   .gpu/wheels/  cp312 wheels: mujoco 3.17.0 (build and run time), tyro, gymnasium and the
#                 dependencies the machine's image does not hold (KINDS.md's package list)
#   .gpu/site/dm_control/suite/  the suite's XMLs and common assets: the C++ engine reads its
#                 models from there (mtrl.envs.engine.dm_control_suite_dir finds the package by
#                 find_spec and never imports it, so the XMLs are all it needs)
# Then: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=590)
# About 30 MB travels (the limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/site/dm_control/suite
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
  mujoco==3.17.0 glfw pyopengl tyro docstring-parser typeguard gymnasium==1.4.0 \
  farama-notifications
suite=$("$PYTHON" -c "import importlib.util as u, pathlib as p
print(p.Path(u.find_spec('dm_control').submodule_search_locations[0]) / 'suite')")
touch .gpu/site/dm_control/__init__.py .gpu/site/dm_control/suite/__init__.py
cp "$suite"/*.xml .gpu/site/dm_control/suite/
cp -r "$suite"/common .gpu/site/dm_control/suite/
du -sh .gpu
