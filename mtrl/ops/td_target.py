"""Fused categorical TD target and cross-entropy as ``torch.library`` ops (C++ on CPU, CUDA on GPU).

Two custom ops wrap the kernels of ``csrc/kernels`` (device implementations in ``_kernels.py``):

* ``mtrl::categorical_td_target``: softmax of the target logits, member combine, atom shift
  ``r + gamma m (z - entropy)``, clip and C51 projection (or HL-Gauss) in one pass (spec §2.2, §3.2).
* ``mtrl::categorical_cross_entropy``: the critic loss with its gradient computed in the same pass
  as the forward (``weight_b / B * (softmax * sum(y) - y)``), saved, and scaled by the incoming
  gradient in backward (``register_autograd``). No double backward.

Both have fake (meta) implementations, so they trace under ``torch.compile`` and replay inside CUDA
graphs (outputs are allocated by the op, the CUDA kernels run on the current stream). In plain
eager mode the public functions call the same kernels directly (and a ``torch.autograd.Function``
for the loss), skipping the dispatcher's Python round trip; while compiling or under a dispatch
mode they go through the registered ops. The semantics are those of :mod:`mtrl.ops.reference`.
Inputs are validated here with clear errors; non-contiguous inputs are made contiguous (a copy),
never rejected. Eager CPU calls whose inputs are already in kernel form (dense, the logits' float
dtype, exact shapes) skip the Python checks: the C++ binding checks them on DLPack views and
answers None for anything else, which then takes the general path (conversion or the clear error).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from mtrl.config import MIN_ATOM_SPACING, SUPPORT_LIMIT
from mtrl.ops import _kernels
from mtrl.ops.reference import HL_GAUSS_SIGMA_BINS, hl_gauss_target_reference

__all__ = ["categorical_cross_entropy", "categorical_td_target", "hl_gauss_target"]

MAX_ATOMS = 4096
# SUPPORT_LIMIT: largest |v_min|, |v_max| (the atoms and their spacing stay finite in float32).
# MIN_ATOM_SPACING: smallest (v_max - v_min) / (K - 1) relative to max(|v_min|, |v_max|), eight
# float32 ulps, so the atoms are distinct float32 values with room for rounding (a narrower support
# once lost probability mass). Defined with AgentConfig, which checks them too (as do the kernels).
# HL-Gauss sigma: 1 / (sigma sqrt 2) stays finite and normal in float32 (the kernels check it too).
SIGMA_RANGE = (1e-30, 1e30)
_COMBINE = {"mean": 0, "min": 1}
_PROJECTION = {"c51": 0, "hl_gauss": 1}
_LOGIT_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.bfloat16)}


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- registered ops
@torch.library.custom_op("mtrl::categorical_td_target", mutates_args=(), device_types="cpu")
def _td_target_op(
    target_logits: Tensor,
    reward: Tensor,
    mask: Tensor,
    discount: Tensor | None,
    discount_value: float,
    entropy: Tensor | None,
    v_min: float,
    v_max: float,
    combine: int,
    projection: int,
    sigma: float,
    check_finite: bool,
) -> tuple[Tensor, Tensor]:
    return _kernels.td_target_cpu(target_logits, reward, mask, discount, discount_value, entropy,
                                  v_min, v_max, combine, projection, sigma, check_finite)


_td_target_op.register_kernel("cuda")(_kernels.td_target_cuda)


@_td_target_op.register_fake
def _td_target_fake(target_logits, reward, mask, discount, discount_value, entropy, v_min, v_max,
                    combine, projection, sigma, check_finite):
    _, batch, num_atoms = target_logits.shape
    dtype = _compute_dtype(target_logits)
    return (target_logits.new_empty(batch, num_atoms, dtype=dtype),
            target_logits.new_empty(batch, dtype=dtype))


@torch.library.custom_op("mtrl::categorical_cross_entropy", mutates_args=(), device_types="cpu")
def _cross_entropy_op(
    online_logits: Tensor, target: Tensor, weight: Tensor | None, need_grad: bool, check_finite: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _kernels.cross_entropy_cpu(online_logits, target, weight, need_grad, check_finite)


_cross_entropy_op.register_kernel("cuda")(_kernels.cross_entropy_cuda)


@_cross_entropy_op.register_fake
def _cross_entropy_fake(online_logits, target, weight, need_grad, check_finite):
    members, batch, num_atoms = online_logits.shape
    dtype = _compute_dtype(online_logits)
    grad_shape = (members, batch, num_atoms) if need_grad else (0,)
    return (online_logits.new_empty((), dtype=dtype), online_logits.new_empty(batch, dtype=dtype),
            online_logits.new_empty(grad_shape))


@torch.library.custom_op("mtrl::scale_saved_grad", mutates_args=(), device_types="cpu")
def _scale_op(saved_grad: Tensor, grad_loss: Tensor) -> Tensor:
    return _kernels.scale_cpu(saved_grad, grad_loss)


_scale_op.register_kernel("cuda")(_kernels.scale_cuda)


@_scale_op.register_fake
def _scale_fake(saved_grad, grad_loss):
    return torch.empty_like(saved_grad)


def _save_for_backward(ctx, need_grad: bool, td_error: Tensor, grad: Tensor) -> None:
    ctx.need_grad = need_grad
    ctx.save_for_backward(grad)
    # td_error and the saved gradient are not differentiable outputs: without this, autograd
    # would materialise (E, B, K) zero gradients for them on every backward.
    ctx.mark_non_differentiable(td_error, grad)
    ctx.set_materialize_grads(False)


_NO_DOUBLE_BACKWARD = (
    "categorical_cross_entropy has no double backward: with create_graph=True its gradient would "
    "be a constant, silently dropping the second-order terms; use "
    "mtrl.ops.categorical_cross_entropy_reference for higher-order gradients")


def _saved_grad_times(ctx, grad_loss: Tensor | None, scale) -> Tensor | None:
    if grad_loss is None:
        return None
    if not ctx.need_grad:
        raise RuntimeError("categorical_cross_entropy was called with need_grad=False")
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph=True
        raise RuntimeError(_NO_DOUBLE_BACKWARD)
    (saved_grad,) = ctx.saved_tensors
    # The loss is linear in the saved per-logit gradient: one scale, no second kernel.
    return scale(saved_grad, grad_loss)


def _cross_entropy_setup_context(ctx, inputs, output) -> None:
    _save_for_backward(ctx, inputs[3], output[1], output[2])


def _cross_entropy_backward(ctx, grad_loss, grad_td_error, grad_grad):
    return _saved_grad_times(ctx, grad_loss, _scale_op), None, None, None, None


_cross_entropy_op.register_autograd(_cross_entropy_backward,
                                    setup_context=_cross_entropy_setup_context)


# --------------------------------------------------------------------------- eager fast path
def _eager() -> bool:
    """True when the kernels may be called directly: not compiling, no dispatch mode (fake
    tensors, make_fx, opcheck) and no torch.func transform (vmap's batched tensors have no data
    pointer; the registered ops batch them by a loop) active. The dispatcher round trip of a
    Python custom op costs tens of microseconds per call, a large share of a TD-target step on the
    CPU."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._are_functorch_transforms_active())


class _CrossEntropyFunction(torch.autograd.Function):
    """Eager twin of mtrl::categorical_cross_entropy + its registered autograd (same kernels).
    ``forward`` runs the CPU kernels on inputs already in kernel form without further Python
    checks (``_kernels.cross_entropy_cpu_fast``), else validates and converts them first.

    The loss is the only autograd output: td_error (detached by definition) is handed back
    through ``td_error_out`` (a list the caller passes in), which spares autograd a second output
    to wrap and mark non-differentiable on every call."""

    @staticmethod
    def forward(ctx, online_logits, target, weight, check_finite, td_error_out):
        loss, td_error, grad = _cross_entropy_eager(online_logits, target, weight, True,
                                                    check_finite)
        td_error_out.append(td_error)
        ctx.save_for_backward(grad)
        ctx.set_materialize_grads(False)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if grad_loss is None:
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True
            raise RuntimeError(_NO_DOUBLE_BACKWARD)
        (saved_grad,) = ctx.saved_tensors
        if saved_grad.is_cuda:
            return _kernels.scale_cuda(saved_grad, grad_loss), None, None, None, None
        return _scale_cpu_unless_one(saved_grad, grad_loss), None, None, None, None


# Function.apply without its Python wrapper (the C++ _FunctionBase.apply it ends in): the
# wrapper binds default arguments only for setup_context-style Functions (not this one) and
# otherwise just unwraps dead functorch wrappers before calling it (done in
# categorical_cross_entropy) -- ~2 us of a fused loss call. Used only while no functorch
# transform is active (_eager(); under one the registered op runs instead).
_cross_entropy_apply = super(torch.autograd.Function, _CrossEntropyFunction).apply
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


def _cross_entropy_eager(online_logits, target, weight, need_grad, check_finite):
    """(loss, td_error, grad or None) from the kernels, in eager mode: the CPU fast path for
    inputs already in kernel form, else validation + conversion and the device kernel."""
    out = None
    if type(online_logits) is Tensor and online_logits.is_cpu:
        out = _kernels.cross_entropy_cpu_fast(online_logits, target, weight, need_grad,
                                              check_finite)
    if out is None:
        args = _cross_entropy_args(online_logits, target, weight)
        impl = _kernels.cross_entropy_cuda if online_logits.is_cuda else _kernels.cross_entropy_cpu
        out = impl(*args, need_grad, check_finite)
    return out


def _scale_cpu_unless_one(saved_grad: Tensor, grad_loss: Tensor) -> Tensor:
    # loss.backward() passes exactly 1: hand the saved gradient on without a copy, unless the
    # graph is kept (retain_graph=True). Without it the graph frees the saved gradient, so the
    # result is its only holder (AccumulateGrad then takes it as .grad, no copy either). With it,
    # the saved gradient serves the next backward too, and autograd.grad would return it as is:
    # an in-place edit of one result would change the others and break the next backward.
    if float(grad_loss) == 1.0 and not torch._C._autograd._get_current_graph_task_keep_graph():
        return saved_grad
    return _kernels.scale_cpu(saved_grad, grad_loss)


# --------------------------------------------------------------------------- validation
def _check_logits(name: str, logits: Tensor) -> tuple[int, int, int]:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got {logits.layout}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must have shape (E, B, K), got {tuple(logits.shape)}")
    members, batch, num_atoms = logits.shape
    if members < 1 or batch < 1:
        raise ValueError(f"{name} needs E >= 1 members and B >= 1 samples, got {tuple(logits.shape)}")
    if not 2 <= num_atoms <= MAX_ATOMS:
        raise ValueError(f"number of atoms K must be in [2, {MAX_ATOMS}], got {num_atoms}")
    allowed = _LOGIT_DTYPES.get(logits.device.type)
    if allowed is None:
        raise ValueError(f"{name} is on device {logits.device}; supported devices are cpu and cuda")
    if logits.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{name} on {logits.device.type} must be {names}, got {logits.dtype}")
    return members, batch, num_atoms


def _check_vector(name: str, t: Tensor | None, batch: int, device: torch.device, dtype,
                  required: bool = False):
    """(B,) per-sample input: same device, real dtype; returned contiguous in ``dtype`` with any
    negative bit resolved (the kernels read raw memory)."""
    if t is None and not required:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got {t.layout}")
    if t.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match B={batch}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the logits are on {device}")
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    return t.to(dtype).resolve_neg().contiguous()


def _as_float(name: str, x) -> float:
    """float(x), with errors that name the argument (a huge int overflows float)."""
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got an int too large for a float") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}") from None


def _check_support(v_min, v_max, num_atoms: int) -> tuple[float, float]:
    v_min, v_max = _as_float("v_min", v_min), _as_float("v_max", v_max)
    if not (abs(v_min) <= SUPPORT_LIMIT and abs(v_max) <= SUPPORT_LIMIT and v_min < v_max):
        raise ValueError(f"support needs finite v_min < v_max with |v| <= {SUPPORT_LIMIT:g}, got "
                         f"v_min={v_min}, v_max={v_max}")
    spacing = (v_max - v_min) / (num_atoms - 1)
    if not spacing >= MIN_ATOM_SPACING * max(abs(v_min), abs(v_max)):
        raise ValueError(f"support too narrow for {num_atoms} float32 atoms: (v_max - v_min) / "
                         f"(K - 1) = {spacing:g} must be >= 2^-20 * max(|v_min|, |v_max|), got "
                         f"v_min={v_min!r}, v_max={v_max!r}")
    return v_min, v_max


def _hl_gauss_sigma(sigma, v_min: float, v_max: float, num_atoms: int) -> float:
    sigma = (HL_GAUSS_SIGMA_BINS * (v_max - v_min) / (num_atoms - 1) if sigma is None
             else _as_float("sigma", sigma))
    if not SIGMA_RANGE[0] <= sigma <= SIGMA_RANGE[1]:
        raise ValueError(f"sigma must be in [{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}], got {sigma}")
    return sigma


# --------------------------------------------------------------------------- public API
def categorical_td_target(
    target_logits: Tensor,
    reward: Tensor,
    mask: Tensor,
    discount: float | Tensor = 0.99,
    entropy: Tensor | None = None,
    v_min: float = -10.0,
    v_max: float = 10.0,
    combine: str = "mean",
    *,
    projection: str = "c51",
    sigma: float | None = None,
    check_finite: bool = True,
) -> tuple[Tensor, Tensor]:
    """Fused categorical soft TD target (spec §2.2, §3.2); semantics of the reference.

    Args:
        target_logits: (E, B, K) target-critic logits; float32/float64 on CPU, float32/bfloat16
            on CUDA. Non-contiguous input is copied.
        reward: (B,) normalised reward. mask: (B,) bootstrap mask (bool or float).
        discount: gamma as a number, a 0-d tensor or (B,) (n-step).
        entropy: (B,) alpha * log pi(a'|s') (subtracted from every atom), or None.
        v_min, v_max: support bounds; K is taken from the logits.
        combine: "mean" of the members' probabilities (BRC) or "min" (per sample, the member
            with the lowest expected value; first on ties).
        projection: "c51" (default) or "hl_gauss" (Gaussian histogram around the clamped scalar
            target r + gamma m (E[z] - entropy)). sigma: HL-Gauss std, default 0.75 bin widths.
        check_finite: raise ValueError when an input is NaN/Inf (on CUDA this costs one device
            sync and is skipped while a CUDA graph is being captured).

    Returns:
        (target (B, K), expected_value (B,) = sum_j z_j target_j), float32 (float64 for float64
        logits), without gradient.

    Raises:
        ValueError: bad shapes, K outside [2, 4096], v_min >= v_max, a support too narrow for
            float32 atoms ((v_max - v_min) / (K - 1) < 2^-20 max(|v_min|, |v_max|)), sigma outside
            [1e-30, 1e30], mismatched devices, unknown combine/projection, non-finite inputs.
            TypeError: unsupported dtypes.
    """
    v_min, v_max = _as_float("v_min", v_min), _as_float("v_max", v_max)
    if projection == "c51" and combine in _COMBINE and _eager():
        # Inputs already in kernel form go straight to the C++ kernel (which checks them); any
        # other input takes the general path below, which converts it or raises a clear error.
        if type(discount) is Tensor:
            out = _kernels.td_target_cpu_fast(target_logits, reward, mask, discount, 0.0, entropy,
                                              v_min, v_max, _COMBINE[combine], 0, 0.0, check_finite)
        elif type(discount) in (float, int):
            out = _kernels.td_target_cpu_fast(target_logits, reward, mask, None,
                                              _as_float("discount", discount),
                                              entropy, v_min, v_max, _COMBINE[combine], 0, 0.0,
                                              check_finite)
        else:
            out = None
        if out is not None:
            return out
    _, batch, num_atoms = _check_logits("target_logits", target_logits)
    v_min, v_max = _check_support(v_min, v_max, num_atoms)
    if combine not in _COMBINE:
        raise ValueError(f"combine must be one of {sorted(_COMBINE)}, got {combine!r}")
    if projection not in _PROJECTION:
        raise ValueError(f"projection must be one of {sorted(_PROJECTION)}, got {projection!r}")
    sigma_value = _hl_gauss_sigma(sigma, v_min, v_max, num_atoms) if projection == "hl_gauss" else 0.0
    device, dtype = target_logits.device, _compute_dtype(target_logits)
    reward = _check_vector("reward", reward, batch, device, dtype, required=True)
    mask = _check_vector("mask", mask, batch, device, dtype, required=True)
    entropy = _check_vector("entropy", entropy, batch, device, dtype)
    discount_value, discount_tensor = 0.0, None
    if isinstance(discount, Tensor) and discount.dim() == 0:
        discount = discount.expand(batch)
    if isinstance(discount, Tensor):
        discount_tensor = _check_vector("discount", discount, batch, device, dtype)
    elif isinstance(discount, numbers.Real) and not isinstance(discount, bool):
        discount_value = _as_float("discount", discount)
        if not math.isfinite(discount_value):
            raise ValueError(f"discount must be finite, got {discount_value}")
    else:
        raise TypeError(f"discount must be a number or a tensor, got {type(discount).__name__}")
    args = (target_logits.resolve_neg().contiguous(), reward, mask, discount_tensor,
            discount_value, entropy, v_min, v_max, _COMBINE[combine], _PROJECTION[projection],
            sigma_value, check_finite)
    if _eager():
        impl = _kernels.td_target_cuda if target_logits.is_cuda else _kernels.td_target_cpu
        return impl(*args)
    return _td_target_op(*args)


def categorical_cross_entropy(
    online_logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    return_td_error: bool = False,
    check_finite: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Fused critic loss sum_e mean_b weight_b CE(target_b, softmax(online_logits[e, b])).

    Differentiable w.r.t. ``online_logits`` (the gradient is produced by the forward pass);
    ``target`` and ``weight`` are constants (no gradient flows to them). No double backward.

    Args:
        online_logits: (E, B, K) online-critic logits (float32/float64 CPU, float32/bfloat16 CUDA).
        target: (B, K) target distribution, e.g. from :func:`categorical_td_target`.
        weight: (B,) importance weights (prioritized replay) or None for all ones.
        return_td_error: also return td_error (B,) = sum_e CE_{e,b}, unweighted and detached,
            the priority signal for PER (Rainbow-style distributional priority).
        check_finite: raise ValueError on NaN/Inf inputs (on CUDA: one device sync, skipped
            during CUDA-graph capture).

    Returns:
        The scalar loss, or (loss, td_error).
    """
    need_grad = online_logits.requires_grad and torch.is_grad_enabled() \
        if isinstance(online_logits, Tensor) else False
    if _eager():
        if not need_grad:  # nothing to differentiate: no autograd node, no gradient computed
            loss, td_error, _ = _cross_entropy_eager(online_logits, target, weight, False,
                                                     check_finite)
        else:
            box: list[Tensor] = []
            loss = _cross_entropy_apply(_unwrap_if_dead(online_logits),
                                        _unwrap_if_dead(target) if isinstance(target, Tensor)
                                        else target,
                                        _unwrap_if_dead(weight) if isinstance(weight, Tensor)
                                        else weight, check_finite, box)
            td_error = box[0]
    else:
        args = _cross_entropy_args(online_logits, target, weight)
        if need_grad and torch._C._are_functorch_transforms_active():
            raise NotImplementedError(
                "categorical_cross_entropy has no torch.func autograd rule (torch.func.grad, "
                "vjp, jacrev, ...): differentiate it with torch.autograd (loss.backward(), "
                "torch.autograd.grad), or use mtrl.ops.categorical_cross_entropy_reference under "
                "torch.func; torch.func.vmap of the loss itself works")
        loss, td_error, _ = _cross_entropy_op(*args, need_grad, check_finite)
        td_error = td_error.detach()
    if return_td_error:
        return loss, td_error
    return loss


def _cross_entropy_args(online_logits, target, weight):
    """Validated (logits, target, weight), contiguous and in the compute dtype (the general path)."""
    _, batch, num_atoms = _check_logits("online_logits", online_logits)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != (batch, num_atoms):
        raise ValueError(
            f"target must have shape ({batch}, {num_atoms}) to match the logits, "
            f"got {tuple(target.shape)}"
        )
    device, dtype = online_logits.device, _compute_dtype(online_logits)
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the logits are on {device}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating-point tensor, got {target.dtype}")
    weight = _check_vector("weight", weight, batch, device, dtype)
    return (online_logits.resolve_neg().contiguous(),
            target.detach().to(dtype).resolve_neg().contiguous(),
            None if weight is None else weight.detach())


def hl_gauss_target(
    value: Tensor, v_min: float, v_max: float, num_atoms: int, sigma: float | None = None
) -> Tensor:
    """HL-Gauss histogram (B, K) of Normal(value, sigma) over bins centred on the K atoms.

    ``value`` (B,) is clamped into [v_min, v_max] first; sigma defaults to 0.75 bin widths. Plain
    PyTorch (a few elementwise kernels): the fused path is
    ``categorical_td_target(..., projection="hl_gauss")``.

    Raises:
        ValueError: non-1-d value, K outside [2, 4096], v_min >= v_max, a support too narrow for
            float32 atoms, sigma outside [1e-30, 1e30].
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"value must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 1:
        raise ValueError(f"value must have shape (B,), got {tuple(value.shape)}")
    if isinstance(num_atoms, bool) or not isinstance(num_atoms, numbers.Integral):
        raise TypeError(f"num_atoms must be an int, got {type(num_atoms).__name__}")
    if not 2 <= int(num_atoms) <= MAX_ATOMS:
        raise ValueError(f"number of atoms K must be in [2, {MAX_ATOMS}], got {num_atoms}")
    v_min, v_max = _check_support(v_min, v_max, int(num_atoms))
    sigma = _hl_gauss_sigma(sigma, v_min, v_max, int(num_atoms))
    return hl_gauss_target_reference(value, v_min, v_max, int(num_atoms), sigma)
