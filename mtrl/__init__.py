"""mtrl: large-scale multi-task online RL (BRC) with a compiled C++ core."""

from __future__ import annotations

import os as _os

# How long an idle OpenMP worker spins before it sleeps (libgomp reads this once, when torch loads
# it, so it is set before the import below; a value the user exported wins). libgomp's default
# (300,000 spins, milliseconds here) is free on an idle machine but makes processes that share the
# cores wait on each other's spinning threads: two 2-thread trainings on 2 cores took 520 ms per
# update each instead of ~45 ms alone. With 10,000 they take 113-128 ms, and a training alone is
# as fast as with the default (per-round ratio 0.995; benchmarks/RESULTS.md, fifth session).
# No effect on a process that imported torch before mtrl.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# The environment engine links the libmujoco shipped by the `mujoco` wheel. In a
# regular install the RUNPATH finds it; in an editable install the extension lives
# in the build tree, so importing mujoco first loads the library into the process.
# `python -m mtrl.train`: Ctrl-C or SIGTERM during the slow imports below (and the rest of the
# startup) ends the run with one line instead of a traceback; see mtrl/_startup.py.
from mtrl import _startup  # noqa: E402  (stdlib only)

if _startup.launched_as_cli():
    _startup.install().reached("imports")

import mujoco as _mujoco  # noqa: E402, F401
# The CPU kernels run on the OpenMP runtime (libgomp) and so do PyTorch's CPU ops. A process loads
# one libgomp.so.1, so importing torch first makes the kernels use the copy torch ships with and
# share its worker threads (two thread pools on the same cores would take turns preempting each other).
import torch as _torch  # noqa: E402, F401


def _find_core():
    """Import the compiled core, also when a source checkout shadows the installed package.

    Running ``python -m mtrl.train`` or the tests from the repository root puts the source
    ``mtrl/`` first on ``sys.path``; it has no compiled ``_core`` after a regular
    ``pip install .``. The installed package directory further down ``sys.path`` has it, so
    that directory is added to this package's search path.
    """
    import glob
    import importlib
    import os
    import sys

    try:
        return importlib.import_module("mtrl._core")
    except ImportError as err:
        here = os.path.realpath(os.path.dirname(__file__))
        for entry in sys.path:
            candidate = os.path.realpath(os.path.join(entry or os.getcwd(), "mtrl"))
            if candidate != here and glob.glob(os.path.join(candidate, "_core.*")):
                __path__.append(candidate)
                return importlib.import_module("mtrl._core")
        raise ImportError(
            "mtrl._core (the compiled core) was not found: install mtrl with `pip install .`"
        ) from err


_core = _find_core()

__version__ = "0.1.0"


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled into ``mtrl._core``."""
    return bool(_core.cuda_built())


def cuda_available() -> bool:
    """Whether CUDA kernels were built *and* a CUDA device is usable right now."""
    return cuda_built() and _core.cuda_device_count() > 0


__all__ = ["__version__", "cuda_available", "cuda_built"]
