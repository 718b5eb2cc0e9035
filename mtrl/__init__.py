"""mtrl: large-scale multi-task online RL (BRC) with a compiled C++ core."""

from __future__ import annotations

# The environment engine links the libmujoco shipped by the `mujoco` wheel. In a
# regular install the RUNPATH finds it; in an editable install the extension lives
# in the build tree, so importing mujoco first loads the library into the process.
import mujoco as _mujoco  # noqa: F401

from mtrl import _core

__version__ = "0.1.0"


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled into ``mtrl._core``."""
    return bool(_core.cuda_built())


def cuda_available() -> bool:
    """Whether CUDA kernels were built *and* a CUDA device is usable right now."""
    return cuda_built() and _core.cuda_device_count() > 0


__all__ = ["__version__", "cuda_available", "cuda_built"]
