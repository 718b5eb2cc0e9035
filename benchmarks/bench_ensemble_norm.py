"""Fused critic-layer kernel (mtrl.ensemble_norm) vs the PyTorch-ops reference, CPU float32.

Times, at the BroNet critic's hidden-layer shape (E, B, W) = (2, 256, 512) by default:
  * the raw kernel calls with preallocated outputs (DLPack entry points; what the training update
    pays per layer): forward with ReLU / residual epilogue, backward with and without the
    parameter-gradient sums; next to torch ``out.copy_(y)`` and ``torch.add(y, r, out=o)`` as
    memory-traffic yardsticks;
  * ``ensemble_norm`` vs ``ensemble_norm_reference`` through autograd (forward, forward+backward).
Every case is timed in interleaved rounds (all cases once per round); medians over rounds.

``--core PATH`` loads another build of ``mtrl._core`` (e.g. a saved copy of the previous commit's
``_core*.so``) before ``mtrl`` is imported, for before/after comparisons in alternating processes.

Usage: nice python benchmarks/bench_ensemble_norm.py [--threads 2] [--rounds 30] [--core PATH]
       [--kernels-only] [--shape E B W]
Prints one line per case and ends with ``RESULT {json}`` (median microseconds per call).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import platform
import statistics
import sys
import time


def _load_core(path: str) -> None:
    import mujoco  # noqa: F401  (loads libmujoco for the core, as mtrl/__init__.py does)

    loader = importlib.machinery.ExtensionFileLoader("mtrl._core", path)
    spec = importlib.util.spec_from_file_location("mtrl._core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["mtrl._core"] = module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=50, help="calls per case per round")
    parser.add_argument("--shape", type=int, nargs=3, default=(2, 256, 512), metavar=("E", "B", "W"))
    parser.add_argument("--core", default=None, help="path of an mtrl._core build to load instead")
    parser.add_argument("--kernels-only", action="store_true",
                        help="only the raw kernel calls and the torch yardsticks")
    args = parser.parse_args()
    import torch

    if args.core is not None:
        _load_core(args.core)
    from mtrl import _core
    from mtrl.ensemble_norm import ensemble_norm, ensemble_norm_reference

    from mtrl.train import keep_freed_memory

    keep_freed_memory()  # as the training loop: freed activations stay mapped (no page faults)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    e, b, w = args.shape
    nt = args.threads
    y, res, go = torch.randn(e, b, w), torch.randn(e, b, w), torch.randn(e, b, w)
    bias, gamma, beta = (torch.randn(e, 1, w) * 0.3 + m for m in (0.0, 1.0, 0.0))
    out, gy, stats = torch.empty(e, b, w), torch.empty(e, b, w), torch.empty(2, e, b)
    grads = torch.empty(3, e, 1, w)
    dl = torch.utils.dlpack.to_dlpack
    eps = 1e-6

    def fwd(epilogue, residual):
        return lambda: _core._ensemble_norm_forward_fast(
            dl(y), dl(bias), dl(gamma), dl(beta), residual, epilogue, eps, dl(out), dl(stats), nt)

    def bwd(relu, with_params):
        return lambda: _core._ensemble_norm_backward_fast(
            dl(go), dl(y), dl(bias), dl(gamma), dl(beta), dl(stats), relu, dl(gy),
            dl(grads) if with_params else None, nt)

    fwd(1, None)()  # stats for the backward
    leaves = [t.clone().requires_grad_() for t in (y, bias, gamma, beta)]

    def autograd(fn, backward, relu):
        def call():
            o = fn(*leaves, eps=eps, relu=relu, residual=None if relu else res)
            if backward:
                o.backward(go)
        return call

    cases = {
        "kernel fwd relu": fwd(1, None),
        "kernel fwd residual": fwd(2, dl(res)),
        "kernel bwd relu +params": bwd(True, True),
        "kernel bwd residual +params": bwd(False, True),
        "kernel bwd relu no params": bwd(True, False),
        "torch copy_ (yardstick)": lambda: out.copy_(y),
        "torch add out= (yardstick)": lambda: torch.add(y, res, out=out),
        "ours fwd relu (autograd)": autograd(ensemble_norm, False, True),
        "reference fwd relu": autograd(ensemble_norm_reference, False, True),
        "ours fwd+bwd relu": autograd(ensemble_norm, True, True),
        "reference fwd+bwd relu": autograd(ensemble_norm_reference, True, True),
        "ours fwd+bwd residual": autograd(ensemble_norm, True, False),
        "reference fwd+bwd residual": autograd(ensemble_norm_reference, True, False),
    }
    if args.kernels_only:
        cases = {k: v for k, v in cases.items() if k.startswith(("kernel", "torch"))}
    for fn in cases.values():
        for _ in range(10):
            fn()
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            times[name].append((time.perf_counter() - t0) / args.calls * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {nt}, shape (E, B, W) = {(e, b, w)}, {args.rounds} rounds x {args.calls} calls")
    for name, t in med.items():
        print(f"{name:30s} {t:8.1f} us")
    pairs = {"fwd_relu_ref_over_ours": ("reference fwd relu", "ours fwd relu (autograd)"),
             "fwd_bwd_relu_ref_over_ours": ("reference fwd+bwd relu", "ours fwd+bwd relu"),
             "fwd_bwd_residual_ref_over_ours": ("reference fwd+bwd residual", "ours fwd+bwd residual")}
    ratios = {k: med[a] / med[b] for k, (a, b) in pairs.items() if a in med}
    for name, r in ratios.items():
        print(f"{name:30s} {r:8.2f}x")
    print("RESULT " + json.dumps({"threads": nt, "shape": [e, b, w],
                                  "median_us": {k: round(v, 1) for k, v in med.items()},
                                  "ratios": {k: round(v, 2) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
