"""Device implementations of the fused TD-target ops: thin calls into ``mtrl._core``.

CPU: tensors go in as NumPy views (zero-copy), so the binding checks every shape, dtype and
layout; the kernels use ``torch.get_num_threads()`` threads. CUDA: tensors go in as raw device
pointers with the current stream (the core does not link libtorch), so layouts and dtypes are
checked here. Outputs are allocated here; inputs must already be contiguous and in the compute
dtype (``mtrl.ops.td_target`` does that).
"""

from __future__ import annotations

import torch
import torch.utils.dlpack
from torch import Tensor

from mtrl import _core

_dlpack = torch.utils.dlpack.to_dlpack

# Lanes per row of the CUDA target kernel (csrc/kernels/td_target_cuda.cu): 0 lets the launcher
# choose (a warp per row for batches of at most 24 rows per multiprocessor and for K > 256, else 8
# for K <= 128 and 16 for K <= 256); 8, 16 or 32 force that layout where the row fits it, 1 or 2
# one or two threads per row (K <= 128; never chosen by the launcher yet). Every layout gives the
# same results up to the rounding of float sums; the CUDA tests and benchmarks/gpu_td_target.py set
# it to check and time each one.
CUDA_TARGET_ROW_LANES = 0


def _dlpack_in(t: Tensor):
    """DLPack capsule of an input; BufferError (the caller's general path) for a negative-bit
    view (torch._neg_view, .conj().imag): DLPack has no negative bit, so its values would be
    read with the wrong sign."""
    if isinstance(t, Tensor) and t.is_neg():
        raise BufferError("negative-bit view")
    return _dlpack(t)


def _np(t: Tensor | None):
    return None if t is None else t.detach().numpy()


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def nonfinite_error(op: str, bad: int, batch: int, named: dict[str, Tensor | None]) -> ValueError:
    """ValueError naming the inputs that hold NaN/Inf (only computed on the error path)."""
    culprits = [n for n, t in named.items() if t is not None and not bool(torch.isfinite(t).all())]
    where = ", ".join(culprits) if culprits else "inputs (overflow)"
    return ValueError(f"{op}: {bad} of {batch} samples have non-finite values (NaN/Inf) in {where}")


def _target_nonfinite(bad, target_logits, reward, mask, discount, entropy) -> ValueError:
    named = {"target_logits": target_logits, "reward": reward, "mask": mask,
             "discount": discount, "entropy": entropy}
    return nonfinite_error("categorical_td_target", bad, target_logits.shape[1], named)


def _cross_entropy_nonfinite(bad, online_logits, target, weight) -> ValueError:
    named = {"online_logits": online_logits, "target": target, "weight": weight}
    return nonfinite_error("categorical_cross_entropy", bad, online_logits.shape[1], named)


def _check_cuda_buffers(device: torch.device, **named: Tensor | None) -> None:
    # The CUDA binding receives raw pointers and cannot check these itself.
    for name, t in named.items():
        if t is None:
            continue
        if t.device != device or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous tensor on {device}")
        if name not in ("target_logits", "online_logits") and t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32 on CUDA, got {t.dtype}")
        if name in ("target_logits", "online_logits") and t.dtype not in (torch.float32,
                                                                          torch.bfloat16):
            raise TypeError(f"{name} must be float32 or bfloat16 on CUDA, got {t.dtype}")


def _capturing(device: torch.device) -> bool:
    """Whether ``device``'s current stream is capturing a CUDA graph (the kernels run there,
    which need not be the current device's)."""
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def _cuda_nonfinite(count: Tensor, check_finite: bool) -> int:
    # Reading the count synchronises; never while a CUDA graph is being captured.
    if not check_finite or _capturing(count.device):
        return 0
    return int(count.item())


def td_target_cpu(target_logits, reward, mask, discount, discount_value, entropy, v_min, v_max,
                  combine, projection, sigma, check_finite):
    """(target (B, K), expected value (B,)) in the logits' dtype (float32/float64)."""
    _, batch, num_atoms = target_logits.shape
    target = torch.empty(batch, num_atoms, dtype=target_logits.dtype)
    value = torch.empty(batch, dtype=target_logits.dtype)
    bad = _core._td_target_cpu(
        _np(target_logits), _np(reward), _np(mask), _np(discount), discount_value, _np(entropy),
        target.numpy(), value.numpy(), v_min, v_max, combine, projection, sigma,
        torch.get_num_threads(),
    )
    if bad and check_finite:
        raise _target_nonfinite(bad, target_logits, reward, mask, discount, entropy)
    return target, value


def td_target_cuda(target_logits, reward, mask, discount, discount_value, entropy, v_min, v_max,
                   combine, projection, sigma, check_finite):
    """(target (B, K), expected value (B,)) float32, enqueued on the current stream."""
    members, batch, num_atoms = target_logits.shape
    device = target_logits.device
    _check_cuda_buffers(device, target_logits=target_logits, reward=reward, mask=mask,
                        discount=discount, entropy=entropy)
    target = torch.empty(batch, num_atoms, dtype=torch.float32, device=device)
    value = torch.empty(batch, dtype=torch.float32, device=device)
    # The non-finite row count only when it will be read (it costs a memset node per call).
    counted = check_finite and not _capturing(device)
    count = torch.empty(1, dtype=torch.int32, device=device) if counted else None
    _core._td_target_cuda(
        target_logits.data_ptr(), int(target_logits.dtype == torch.bfloat16), members, batch,
        num_atoms, reward.data_ptr(), mask.data_ptr(), _ptr(discount), discount_value,
        _ptr(entropy), target.data_ptr(), value.data_ptr(), _ptr(count), v_min, v_max,
        combine, projection, sigma, device.index, torch.cuda.current_stream(device).cuda_stream,
        CUDA_TARGET_ROW_LANES,
    )
    bad = _cuda_nonfinite(count, True) if counted else 0
    if bad:
        raise _target_nonfinite(bad, target_logits, reward, mask, discount, entropy)
    return target, value


def td_target_cpu_fast(target_logits, reward, mask, discount, discount_value, entropy, v_min,
                       v_max, combine, projection, sigma, check_finite):
    """td_target_cpu for eager CPU tensors already in kernel form, or None (nothing computed)
    when any input is not: a non-Tensor or non-CPU logits, another dtype or shape, a
    non-contiguous or 0-d vector, bad sizes, support, codes or sigma. The binding checks all of
    that on DLPack views; the caller then takes the general path (validation + conversion)."""
    if type(target_logits) is not Tensor or not target_logits.is_cpu or target_logits.dim() != 3:
        return None
    _, batch, num_atoms = target_logits.shape
    dtype = target_logits.dtype
    target, value = torch.empty(batch, num_atoms, dtype=dtype), torch.empty(batch, dtype=dtype)
    try:
        capsules = (_dlpack_in(target_logits), _dlpack_in(reward), _dlpack_in(mask),
                    None if discount is None else _dlpack_in(discount),
                    None if entropy is None else _dlpack_in(entropy))
    except (TypeError, RuntimeError, BufferError):  # not a (plain, exportable) tensor
        return None
    bad = _core._td_target_cpu_fast(*capsules[:4], discount_value, capsules[4], _dlpack(target),
                                    _dlpack(value), v_min, v_max, combine, projection, sigma,
                                    torch.get_num_threads())
    if bad is None:
        return None
    if bad and check_finite:
        raise _target_nonfinite(bad, target_logits, reward, mask, discount, entropy)
    return target, value


def cross_entropy_cpu_fast(online_logits, target, weight, need_grad, check_finite):
    """cross_entropy_cpu for eager CPU tensors already in kernel form (logits (E, B, K), target
    (B, K) and weight (B,) dense in the logits' float dtype), or None (nothing computed)."""
    if type(online_logits) is not Tensor or online_logits.dim() != 3:
        return None
    members, batch, num_atoms = online_logits.shape
    dtype = online_logits.dtype
    loss, td_error = torch.empty((), dtype=dtype), torch.empty(batch, dtype=dtype)
    grad = torch.empty(members, batch, num_atoms, dtype=dtype) if need_grad else None
    try:
        capsules = (_dlpack_in(online_logits), _dlpack_in(target),
                    None if weight is None else _dlpack_in(weight))
    except (TypeError, RuntimeError, BufferError):
        return None
    bad = _core._cross_entropy_cpu_fast(*capsules, _dlpack(td_error),
                                        None if grad is None else _dlpack(grad), _dlpack(loss),
                                        torch.get_num_threads())
    if bad is None:
        return None
    if bad and check_finite:
        raise _cross_entropy_nonfinite(bad, online_logits, target, weight)
    return loss, td_error, grad


def cross_entropy_cpu(online_logits, target, weight, need_grad, check_finite):
    """(loss (), td_error (B,), grad (E, B, K) or (0,)) in the logits' dtype."""
    members, batch, num_atoms = online_logits.shape
    dtype = online_logits.dtype
    loss = torch.empty((), dtype=dtype)
    td_error = torch.empty(batch, dtype=dtype)
    grad = torch.empty((members, batch, num_atoms) if need_grad else (0,), dtype=dtype)
    bad = _core._cross_entropy_cpu(
        _np(online_logits), _np(target), _np(weight), td_error.numpy(),
        grad.numpy() if need_grad else None, loss.numpy(), torch.get_num_threads(),
    )
    if bad and check_finite:
        raise _cross_entropy_nonfinite(bad, online_logits, target, weight)
    return loss, td_error, grad


def cross_entropy_cuda(online_logits, target, weight, need_grad, check_finite):
    """(loss (), td_error (B,)) float32 and grad (E, B, K) in the logits' dtype (or (0,))."""
    members, batch, num_atoms = online_logits.shape
    device = online_logits.device
    _check_cuda_buffers(device, online_logits=online_logits, target=target, weight=weight)
    loss = torch.empty((), dtype=torch.float32, device=device)
    td_error = torch.empty(batch, dtype=torch.float32, device=device)
    grad = torch.empty((members, batch, num_atoms) if need_grad else (0,),
                       dtype=online_logits.dtype, device=device)
    count = torch.empty(1, dtype=torch.int32, device=device)
    _core._cross_entropy_cuda(
        online_logits.data_ptr(), int(online_logits.dtype == torch.bfloat16), members, batch,
        num_atoms, target.data_ptr(), _ptr(weight), td_error.data_ptr(),
        grad.data_ptr() if need_grad else 0, loss.data_ptr(), count.data_ptr(), device.index,
        torch.cuda.current_stream(device).cuda_stream,
    )
    bad = _cuda_nonfinite(count, check_finite)
    if bad:
        raise _cross_entropy_nonfinite(bad, online_logits, target, weight)
    return loss, td_error, grad


def scale_cpu(saved_grad: Tensor, grad_loss: Tensor) -> Tensor:
    """saved_grad * grad_loss in C++ on our threads (torch's element-wise OpenMP team stalls
    badly on an oversubscribed machine)."""
    out = torch.empty_like(saved_grad)
    _core._scale_cpu(saved_grad.numpy(), float(grad_loss), out.numpy(), torch.get_num_threads())
    return out


def scale_cuda(saved_grad: Tensor, grad_loss: Tensor) -> Tensor:
    # In float32, rounded once to the gradient's dtype (bf16 logits: grad_loss itself rounded to
    # bf16 first was 0.24% off at 1.3).
    return (saved_grad.float() * grad_loss.float()).to(saved_grad.dtype)
