"""CPU benchmark: fused categorical TD target (+ loss fwd/bwd) vs the PyTorch reference.

Same run, same inputs, E = 2 critics: ``mtrl.ops`` (C++ kernels) against
``mtrl.ops.reference`` (softmax + ``scatter_add_`` projection + log-softmax cross-entropy, the way
a careful PyTorch user writes it) in eager mode and under ``torch.compile``. Two tasks:
``target`` (the TD target alone) and ``fwdbwd`` (target + loss forward + backward to the online
logits). Implementations are interleaved round by round so machine load hits all of them alike;
times are medians over rounds, ratios are medians of the per-round ratios. The "kernels" column
is ours without Python: the raw ``mtrl._core`` calls with preallocated outputs (what the op
costs beyond it is validation, allocation and autograd). Prints a table; the last line is
``RESULT {json}`` with ratios ours-speed / theirs-speed (> 1: mtrl is faster).

    python benchmarks/bench_td_target.py [--quick] [--threads N] [--cpu-time]

``--cpu-time`` times every call with the calling thread's CPU time (``time.thread_time``) and
forces one thread: on a machine shared with other jobs that reading leaves out the time slices
other processes take, so its ratios hold where wall-clock ones swing with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from mtrl import _core
from mtrl.ops import (
    categorical_cross_entropy,
    categorical_cross_entropy_reference,
    categorical_td_target,
    categorical_td_target_reference,
)

E, V_MIN, V_MAX, GAMMA = 2, -10.0, 10.0, 0.99


def make_inputs(b: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "target_logits": torch.randn(E, b, k, generator=gen) * 2,
        "reward": torch.randn(b, generator=gen) * 3,
        "mask": (torch.rand(b, generator=gen) > 0.05).float(),
        "entropy": torch.randn(b, generator=gen) * 0.1,
        "online": torch.randn(E, b, k, generator=gen).requires_grad_(),
    }


def ours_target(x):
    return categorical_td_target(x["target_logits"], x["reward"], x["mask"], GAMMA, x["entropy"],
                                 V_MIN, V_MAX)


def ours_loss(x):
    target, _ = ours_target(x)
    return categorical_cross_entropy(x["online"], target)


def ref_target(target_logits, reward, mask, entropy):
    return categorical_td_target_reference(target_logits, reward, mask, GAMMA, entropy,
                                           v_min=V_MIN, v_max=V_MAX)


def ref_loss(target_logits, reward, mask, entropy, online):
    target, _ = ref_target(target_logits, reward, mask, entropy)
    return categorical_cross_entropy_reference(online, target)


def make_kernels_only(x, task: str):
    """The raw binding calls of our ops, outputs preallocated (no Python-side op machinery)."""
    e, b, k = x["target_logits"].shape
    target, value = torch.empty(b, k), torch.empty(b)
    td_error, grad, loss = torch.empty(b), torch.empty(e, b, k), torch.empty(())
    arrays = [x[n].detach().numpy() for n in ("target_logits", "reward", "mask", "entropy",
                                                "online")]
    threads = torch.get_num_threads()

    def run():
        _core._td_target_cpu(arrays[0], arrays[1], arrays[2], None, GAMMA, arrays[3],
                             target.numpy(), value.numpy(), V_MIN, V_MAX, 0, 0, 0.0, threads)
        if task == "fwdbwd":
            _core._cross_entropy_cpu(arrays[4], target.numpy(), None, td_error.numpy(),
                                     grad.numpy(), loss.numpy(), threads)
    return run


def make_tasks(x, compiled_target, compiled_loss):
    args = (x["target_logits"], x["reward"], x["mask"], x["entropy"])

    def fwdbwd(loss_fn):
        def run():
            x["online"].grad = None
            loss_fn().backward()
        return run

    return {
        "target": {
            "ours": lambda: ours_target(x),
            "kernels": make_kernels_only(x, "target"),
            "eager": lambda: ref_target(*args),
            "compile": lambda: compiled_target(*args),
        },
        "fwdbwd": {
            "ours": fwdbwd(lambda: ours_loss(x)),
            "kernels": make_kernels_only(x, "fwdbwd"),
            "eager": fwdbwd(lambda: ref_loss(*args, x["online"])),
            "compile": fwdbwd(lambda: compiled_loss(*args, x["online"])),
        },
    }


def time_interleaved(fns: dict, rounds: int, budget_s: float,
                     clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each fn in every round; each round times each fn once, in turn."""
    for fn in fns.values():  # warm-up (and compile)
        for _ in range(3):
            fn()
    inner = {}
    for name, fn in fns.items():  # calls per measurement: about budget_s / rounds / len(fns)
        t0 = clock()
        fn()
        once = max(clock() - t0, 1e-6)
        inner[name] = max(1, int(budget_s / rounds / len(fns) / once))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = clock()
            for _ in range(inner[name]):
                fn()
            samples[name].append((clock() - t0) / inner[name])
    return samples


def ratio(theirs: list[float], ours: list[float]) -> float:
    return statistics.median(t / o for t, o in zip(theirs, ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 101, B = 1024 only (< 60 s)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads, also used by the mtrl kernels")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the thread's CPU time (load-robust); forces --threads 1")
    args = parser.parse_args()
    if args.cpu_time:
        args.threads = 1
    clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    shapes = [(101, 1024)] if args.quick else [(k, b) for k in (101, 51) for b in (256, 1024, 4096)]
    rounds, budget = (7, 1.5) if args.quick else (15, 3.0)
    compiled_target = torch.compile(ref_target, dynamic=False)
    compiled_loss = torch.compile(ref_loss, dynamic=False)
    load = os.getloadavg()[0]
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {args.threads}, E = {E}; {rounds} interleaved rounds; load average {load:.1f}; "
          f"{'thread CPU time' if args.cpu_time else 'wall time'}")
    print(f"{'task':>7} {'K':>4} {'B':>5} | {'ours ms':>8} {'kernels':>8} {'eager ms':>9} "
          f"{'compile ms':>10} | {'vs eager':>8} {'vs compile':>10}")
    result: dict[str, float | int | str] = {"threads": args.threads, "load_avg": round(load, 1),
                                            "clock": "thread_cpu" if args.cpu_time else "wall"}
    for k, b in shapes:
        x = make_inputs(b, k)
        for task, fns in make_tasks(x, compiled_target, compiled_loss).items():
            samples = time_interleaved(fns, rounds, budget, clock)
            t = {name: statistics.median(v) for name, v in samples.items()}
            vs_eager = ratio(samples["eager"], samples["ours"])
            vs_compile = ratio(samples["compile"], samples["ours"])
            print(f"{task:>7} {k:>4} {b:>5} | {t['ours'] * 1e3:8.3f} {t['kernels'] * 1e3:8.3f} "
                  f"{t['eager'] * 1e3:9.3f} {t['compile'] * 1e3:10.3f} | {vs_eager:7.1f}x "
                  f"{vs_compile:9.1f}x")
            suffix = f"{b}" if k == 101 else f"{b}_k{k}"
            result[f"cpu_{task}_{suffix}_vs_eager"] = round(vs_eager, 2)
            result[f"cpu_{task}_{suffix}_vs_compile"] = round(vs_compile, 2)
            result[f"cpu_{task}_{suffix}_ms"] = {n: round(v * 1e3, 4) for n, v in t.items()}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
