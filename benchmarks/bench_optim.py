"""CPU benchmark: mtrl.optim.FusedAdamW.step_with_polyak (one C++ pass) against torch's fused
AdamW step followed by torch._foreach_lerp_ (what the agent ran before), on the parameters of a
width-512 critic (2 members, 2 blocks: ~2.2 M parameters, 23 tensors).

    python benchmarks/bench_optim.py [--threads N] [--width W]

Both run in the same process on separate copies, interleaved round by round; medians of per-round
times and of per-round ratios. Last line: RESULT {json} (speedup = torch time / ours).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mtrl.networks import Critic
from mtrl.optim import FusedAdamW


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = {}
    for name in ("ours", "torch"):
        torch.manual_seed(0)
        params = list(Critic(17, 6, 1, width=args.width).parameters())
        targets = [t.detach().clone() for t in params]
        for q in params:
            q.grad = torch.randn_like(q)
        if name == "ours":
            opt = FusedAdamW(params, lr=3e-4, weight_decay=1e-4)
            runs[name] = lambda opt=opt, t=targets: opt.step_with_polyak(t, 0.005)
        else:
            opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4, fused=True)

            def step(opt=opt, t=targets, params=params):
                opt.step()
                torch._foreach_lerp_(t, params, 0.005)
            runs[name] = step
    for fn in runs.values():
        for _ in range(5):
            fn()
    samples = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            samples[name].append((time.perf_counter() - t0) / 5)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    speedup = statistics.median(t / o for t, o in zip(samples["torch"], samples["ours"]))
    n = sum(q.numel() for q in Critic(17, 6, 1, width=args.width).parameters())
    print(f"threads {args.threads}, width {args.width}, {n / 1e6:.2f} M parameters")
    print(f"FusedAdamW.step_with_polyak {ms['ours']:.3f} ms | torch AdamW(fused) + foreach_lerp "
          f"{ms['torch']:.3f} ms | speedup {speedup:.2f}x")
    print("RESULT " + json.dumps({"threads": args.threads, "width": args.width,
                                  "ours_ms": round(ms["ours"], 3), "torch_ms": round(ms["torch"], 3),
                                  "speedup": round(speedup, 2)}))


if __name__ == "__main__":
    main()
