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

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step (``closure`` as torch.optim: re-evaluates the loss first)."""
        return self.step_with_polyak(None, 0.0, closure)

    @torch.no_grad()
    def step_with_polyak(self, targets: list[Tensor] | None, tau: float, closure=None):
        """One AdamW step, then ``target <- target + tau (param - target)`` for each parameter
        and its target copy (same order as the parameters; None: no targets), with the new
        parameters. On CPU float32 both happen in one pass over the elements."""
        if closure is None and self._step_in_one_pass(targets, tau):
            return None
        loss = super().step(closure)
        if targets is not None:
            polyak_update(targets, self.param_groups[0]["params"], tau)
        return loss

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
        grads = [p.grad for p in params]
        if not params or any(g is None or g.is_sparse for g in grads):
            return False
        states = [self.state[p] for p in params]
        if any(len(s) == 0 for s in states):
            if any(len(s) != 0 for s in states):
                return False
            for p, s in zip(params, states):  # as torch's AdamW(fused=True) initialises it
                s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        steps = [s["step"] for s in states]
        counts = torch.stack(steps)
        if counts.device.type != "cpu" or not bool((counts == counts[0]).all()):
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
            float(group["weight_decay"]), float(group["eps"]), float(counts[0]) + 1.0, float(tau),
            torch.get_num_threads())
        if done is None:
            return False
        torch._foreach_add_(steps, 1)
        return True
