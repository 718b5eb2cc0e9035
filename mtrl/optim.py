"""AdamW with the CPU step as one C++ pass over all parameters, and the Polyak update of a target
copy fused into that pass (brc-spec §2.2 steps 1-2, §11.1; kernel in csrc/optim).

At width 512 the critic's AdamW step and the Polyak update that follows it are each one sweep
over ~9 MB of parameters and state (torch's fused AdamW: parameters, gradients and both moments;
then a lerp per tensor reading the parameters again): ~2.5 ms of a ~40 ms CPU update on two
threads. One pass reads every parameter once and skips torch.optim's per-step Python work.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.utils.dlpack
from torch import Tensor

from mtrl import _core
from mtrl.math import polyak_update

_dl = torch.utils.dlpack.to_dlpack
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory without gaps or overlaps, in any order of
    the dimensions (contiguous, or e.g. transposed)."""
    extent = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n > 1):
        if stride != extent:
            return False
        extent = stride * size
    return True


def _fused_kernels_apply(params: list[Tensor], states: list[dict]) -> bool:
    """Whether torch's fused AdamW kernels compute this step right. They walk a parameter, its
    gradient and its moments as flat arrays, so the parameter must be dense and the others laid
    out like it (the same strides); a transposed gradient or a sliced parameter made them pair up
    different elements (measured 0.03 off after three steps at lr 1e-2; torch's single-tensor
    AdamW is right)."""
    for p, state in zip(params, states):
        others = (p.grad, state.get("exp_avg"), state.get("exp_avg_sq"))
        if p.is_contiguous() and all(t is None or t.is_sparse or t.is_contiguous() for t in others):
            continue  # the common case, in C calls (the strides below cost ~5 us per parameter)
        if not _dense(p):
            return False
        for t in others:
            if (isinstance(t, Tensor) and not t.is_sparse and any(
                    a != b for a, b, n in zip(t.stride(), p.stride(), p.shape) if n > 1)):
                return False
    return True


def _check_moment_shapes(params: list[Tensor], states: list[dict]) -> None:
    """ValueError unless every moment tensor has its parameter's shape (torch's fused AdamW
    writes a parameter's worth of elements into them without checking)."""
    for k, (p, state) in enumerate(zip(params, states)):
        for key in _MOMENTS:
            m = state.get(key)
            if isinstance(m, Tensor) and m.shape != p.shape:
                raise ValueError(f"AdamW state: {key} of parameter {k} has shape "
                                 f"{tuple(m.shape)}, the parameter {tuple(p.shape)}")


def fused_kernel_step(optimizer: torch.optim.Adam) -> bool:
    """The step of a torch Adam or AdamW with ``fused=True``, by its kernels alone: the same
    ``torch._foreach_add_`` of the step counts and ``torch._fused_adam_`` / ``_fused_adamw_``
    call, with the same arguments, as torch's step makes (so the same result, bit for bit),
    without the rest of its per-step Python (step wrapper with profiler record and hooks,
    ``_init_group``, grouping by device and dtype), ~0.05-0.3 ms a step: more than the
    arithmetic of the temperature's one scalar, or of a CUDA step, which only launches kernels.

    Returns False, with nothing changed, where torch's step does more than that: several
    parameter groups, amsgrad / maximize / capturable / differentiable, a tensor lr or betas, a
    grad scaler's state, a parameter without (or with a sparse) gradient, state not created yet
    (its first step), complex parameters, parameters of several devices or dtypes. Step hooks
    registered on the optimizer do not run: this is called in place of ``optimizer.step()``.
    """
    if len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if (not group.get("fused") or group["amsgrad"] or group["maximize"] or group["capturable"]
            or group["differentiable"]):
        return False
    lr, (beta1, beta2) = group["lr"], group["betas"]
    if isinstance(lr, Tensor) or isinstance(beta1, Tensor) or isinstance(beta2, Tensor):
        return False
    if getattr(optimizer, "grad_scale", None) is not None or getattr(
            optimizer, "found_inf", None) is not None:
        return False
    params = group["params"]
    if not params or params[0].is_complex():
        return False
    device, dtype = params[0].device, params[0].dtype
    grads, states = [p.grad for p in params], [optimizer.state.get(p) for p in params]
    if any(g is None or g.is_sparse for g in grads) or not all(states) or any(
            p.device != device or p.dtype != dtype for p in params):
        return False
    steps = [s["step"] for s in states]
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        kernel(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
               [], steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
               weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
               grad_scale=None, found_inf=None)
    return True


class FusedAdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose step on CPU float32 parameters is one C++ pass (same update rule:
    decoupled weight decay, bias-corrected moments; equal to torch's up to float rounding).

    The state, ``state_dict`` and hyper-parameters are AdamW's (step, exp_avg, exp_avg_sq per
    parameter), so checkpoints load into either class. Every other case (CUDA, other dtypes,
    several parameter groups, amsgrad/maximize, a parameter without gradient, a closure) runs
    torch's fused AdamW.
    """

    def __init__(self, params: Iterable[Tensor], *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         fused=True)
        # The per-parameter step counts, equal on the one-pass path, as 0-d views of one (N,)
        # tensor: advanced by one add_ and checked by identity instead of a stack, a comparison
        # and 27 adds per step (~0.1 ms). None until the first one-pass step, and again after
        # torch's step or a load_state_dict (which may leave the counts unequal or replaced).
        # A count replaced in self.state is noticed (identity); one changed in place by hand,
        # e.g. state[p]["step"].fill_(k), is not: set a new tensor instead.
        self._counts: Tensor | None = None
        self._count_views: list[Tensor] = []

    def state_dict(self) -> dict:
        """AdamW's state dict, with each step count a tensor of its own (as torch's AdamW keeps
        them), not a view of the shared counts."""
        state = super().state_dict()
        state["state"] = {key: {**entry, "step": entry["step"].clone()} if "step" in entry
                          else entry for key, entry in state["state"].items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's; ValueError, with nothing loaded, when a saved moment's shape differs from
        its parameter's (the state of another network)."""
        params = [p for group in self.param_groups for p in group["params"]]
        saved = state_dict.get("state", {}) if isinstance(state_dict, dict) else {}
        known = [k for k, s in saved.items()
                 if isinstance(k, int) and 0 <= k < len(params) and isinstance(s, dict)]
        _check_moment_shapes([params[k] for k in known], [saved[k] for k in known])
        self._counts = None
        super().load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim.Optimizer.zero_grad; with set_to_none (the default) a plain loop that
        drops the gradients, without the profiler record and per-device grouping (~0.1 ms)."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
        return None

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step (``closure`` as torch.optim: re-evaluates the loss first)."""
        return self.step_with_polyak(None, 0.0, closure)

    @torch.no_grad()
    def step_with_polyak(self, targets: list[Tensor] | None, tau: float, closure=None):
        """One AdamW step, then ``target <- target + tau (param - target)`` for each parameter
        and its target copy (same order as the parameters; None: no targets), with the new
        parameters. On CPU float32 both happen in one pass over the elements."""
        if targets is not None and not 0.0 <= tau <= 1.0:
            raise ValueError(f"step_with_polyak: tau must be in [0, 1], got {tau}")
        if closure is None and self._step_in_one_pass(targets, tau):
            return None
        self._counts = None  # torch's step skips parameters without gradient
        fused_apply = True
        for group in self.param_groups:  # what torch's fused step would get wrong
            params = group["params"]
            states = [self.state.get(p, {}) for p in params]
            _check_moment_shapes(params, states)
            fused_apply = fused_apply and _fused_kernels_apply(params, states)
        if not fused_apply:
            loss = self._single_tensor_step(closure)
        elif closure is None and fused_kernel_step(self):  # (off the CPU: a CUDA agent)
            loss = None
        else:
            loss = super().step(closure)
        if targets is not None:
            polyak_update(targets, self.param_groups[0]["params"], tau)
        return loss

    def _single_tensor_step(self, closure):
        """torch's AdamW step with its single-tensor implementation (the same state), for the
        layouts its fused kernels get wrong (_fused_kernels_apply)."""
        saved = [(group["fused"], group["foreach"]) for group in self.param_groups]
        try:
            for group in self.param_groups:
                group["fused"], group["foreach"] = False, False
            return super().step(closure)
        finally:
            for group, (fused, foreach) in zip(self.param_groups, saved):
                group["fused"], group["foreach"] = fused, foreach
                # A first step taken here made the step counts on the CPU, as the single-tensor
                # path keeps them; the fused kernels want them on the parameter's device.
                for p in group["params"]:
                    step = self.state.get(p, {}).get("step")
                    if fused and isinstance(step, torch.Tensor) and step.device != p.device:
                        self.state[p]["step"] = step.to(p.device)

    def _step_in_one_pass(self, targets: list[Tensor] | None, tau: float) -> bool:
        """The C++ step; False, with nothing changed, where it does not apply."""
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
            return False
        params = group["params"]
        if targets is not None and len(targets) != len(params):
            raise ValueError(f"step_with_polyak: {len(targets)} targets for {len(params)} "
                             "parameters")
        # Off the CPU (a CUDA agent) torch's step runs: known before the counts are stacked
        # (one more kernel launch per step there).
        if not params or not params[0].is_cpu:
            return False
        grads = [p.grad for p in params]
        if any(g is None or g.is_sparse for g in grads):
            return False
        states = [self.state[p] for p in params]
        views = self._count_views
        if (self._counts is None or len(views) != len(states)
                or any(s.get("step") is not v for s, v in zip(states, views))):
            if not self._share_counts(params, states):
                return False
        beta1, beta2 = group["betas"]
        try:
            capsules = [[_dl(t) for t in tensors] for tensors in (
                params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states])]
            target_capsules = None if targets is None else [_dl(t) for t in targets]
        except (TypeError, RuntimeError, BufferError):  # not plain exportable tensors
            return False
        done = _core._adamw_step_fast(
            *capsules, target_capsules, float(group["lr"]), float(beta1), float(beta2),
            float(group["weight_decay"]), float(group["eps"]), float(self._counts[0]) + 1.0,
            float(tau), torch.get_num_threads())
        if done is None:
            return False
        self._counts.add_(1)
        return True

    def _share_counts(self, params: list[Tensor], states: list[dict]) -> bool:
        """Make every parameter's step count a view of one shared tensor (creating the state as
        torch's AdamW(fused=True) does on the first step); False, with nothing changed, unless
        the counts are all on the CPU and equal (torch's step then runs)."""
        if any(len(s) == 0 for s in states):
            if any(len(s) != 0 for s in states):
                return False
            for p, s in zip(params, states):  # as torch's AdamW(fused=True) initialises it
                s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        counts = torch.stack([s["step"] for s in states])
        if (counts.device.type != "cpu" or counts.dtype != torch.float32
                or not bool((counts == counts[0]).all())):
            return False
        self._counts, self._count_views = counts, list(counts.unbind(0))
        for s, view in zip(states, self._count_views):
            s["step"] = view
        return True
