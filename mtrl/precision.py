"""Scoped float32 matmul precision of CUDA work: TF32 tensor cores or IEEE (AgentConfig.tf32)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cuda_matmul_precision(tf32: bool) -> Iterator[None]:
    """Run the body with CUDA float32 matmuls in TF32 (``tf32=True``) or in IEEE float32, then
    restore the caller's setting, also when the body raises.

    torch's switch is process-global, so the agent sets it only around its own work and gives it
    back. It uses ``torch.backends.cuda.matmul.fp32_precision``, the API torch documents since 2.9
    (``allow_tf32`` and ``torch.set_float32_matmul_precision`` are the legacy one, to be
    deprecated; the latter also switches oneDNN's CPU matmuls). Both APIs read the same state, so
    the caller may have used either: the previous value is read and restored through the new one,
    after which the legacy getters agree again. Inside the body, where the caller's legacy
    setting disagrees, torch 2.13's legacy getters (``allow_tf32``,
    ``torch.get_float32_matmul_precision()``) raise RuntimeError about mixed APIs; cuBLAS,
    Dynamo's guards and Inductor read the new one (in torch 2.13; Inductor's max-autotune
    template cache key still calls the legacy getter, but the agent compiles in the default
    mode). When the caller's effective setting already is the requested one, nothing is set.

    Only CUDA matmuls (cuBLAS / cuBLASLt, and Inductor's matmul codegen) are affected: CPU matmuls
    stay as they are, and cuDNN's flag is left alone (mtrl has no convolutions). On GPUs before
    Ampere cuBLAS has no TF32 and ignores the flag. Another thread's CUDA matmuls during the body
    see the flag too (mtrl's training loop runs torch from one thread; autograd's device threads
    run a ``backward()`` called inside the body while the caller waits, so they see it as meant).

    Args:
        tf32: True for TF32 (10-bit mantissa products, float32 accumulation and range), False for
            IEEE float32.
    """
    matmul = torch.backends.cuda.matmul
    # The getter resolves an unset value to its parent's (torch.backends.fp32_precision, "none"
    # when nothing is set anywhere, i.e. IEEE float32). Equal to the parent's: restored as unset,
    # so that it keeps following the parent as before.
    previous = matmul.fp32_precision
    restore = "none" if previous == torch.backends.fp32_precision else previous
    wanted = "tf32" if tf32 else "ieee"
    if (previous if previous != "none" else "ieee") == wanted:
        yield
        return
    matmul.fp32_precision = wanted
    try:
        yield
    finally:
        matmul.fp32_precision = restore


def check_tf32_device(tf32: bool, device: torch.device | str, runs_on: str) -> None:
    """ValueError when TF32 is asked of work that does not run on CUDA (AgentConfig.tf32).

    Args:
        runs_on: where the work runs, for the message ("this agent runs on cpu", ...).
    """
    if tf32 and torch.device(device).type != "cuda":
        raise ValueError(
            f"AgentConfig.tf32 needs a CUDA device, and {runs_on}: TF32 is a mode of NVIDIA "
            f"tensor cores (Ampere and later), CPU matmuls have none. Leave tf32 off here.")
