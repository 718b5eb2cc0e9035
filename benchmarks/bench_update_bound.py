"""How close one agent update is to what its matmuls and memory-bound kernels alone would take.

bench_train.py's floor counts only the matmuls, timed at the critic's shapes. An update also runs
work that no Python change removes: the AdamW + Polyak pass over the parameters and optimizer
state, the fused bias + LayerNorm + ReLU/residual kernels of every layer (forward and backward),
and the TD target and loss. This script times those pieces on their own, with warm inputs and no
Python between calls, and reports two fractions of the matmul floor:

- ``bound``: floor / (floor + memory-bound pieces): the most an update could reach while it
  runs these kernels, with no Python, autograd or small-op overhead at all;
- ``update``: floor / the real update (``BRCAgent.update`` on a synthetic batch).

The gap between them is what the update spends on Python, the autograd engine, small torch ops
and matmuls that run slower than the probe. Rounds alternate all measurements, so the shared
machine's load hits them alike; medians over rounds. Last line: ``RESULT {json}``.

    python benchmarks/bench_update_bound.py [--rounds N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import mtrl  # noqa: F401,I001  (before torch: the OpenMP spin count the CLI runs with)
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import iteration_flops, matmul_rate, synthetic_agent  # noqa: E402

from mtrl import ops  # noqa: E402
from mtrl.config import AgentConfig  # noqa: E402
from mtrl.ensemble_norm import (  # noqa: E402
    EPILOGUE_RELU,
    EPILOGUE_RESIDUAL,
    backward_kernel,
    forward_kernel,
)
from mtrl.train import keep_freed_memory  # noqa: E402

CONFIGS = {"st": (17, 6, 1, 256), "mt4": (24, 6, 4, 1024)}  # obs, action, tasks, batch
WIDTH = 512
DEFAULTS = AgentConfig()  # the agent's depths and actor width, as synthetic_agent builds it


def median_time(fn, reps: int = 15) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def norm_kernels(members: int, batch: int, width: int, forwards: int, residuals: int,
                 backwards_with_params: int, backwards: int):
    """A callable running the fused norm kernels an update runs for one network."""
    y, res, grad_out = (torch.randn(members, batch, width) for _ in range(3))
    bias, gamma, beta = (torch.randn(members, 1, width) for _ in range(3))
    _, stats = forward_kernel(y, bias, gamma, beta, None, EPILOGUE_RELU, 1e-6)

    def run():
        for i in range(forwards):
            residual = res if i < residuals else None
            forward_kernel(y, bias, gamma, beta, residual,
                           EPILOGUE_RESIDUAL if residual is not None else EPILOGUE_RELU, 1e-6)
        for i in range(backwards_with_params + backwards):
            backward_kernel(grad_out, y, bias, gamma, beta, stats, True, i < backwards_with_params)
    return run


def measure(key: str, rounds: int) -> dict:
    obs, act, tasks, batch = CONFIGS[key]
    agent, sample, denominator = synthetic_agent(obs, act, tasks, WIDTH, batch)
    depth, actor_depth = DEFAULTS.critic_depth, DEFAULTS.actor_depth
    norms, actor_norms_per_pass = 1 + 2 * depth, 1 + 2 * actor_depth  # input layer + 2 per block
    # Critic: 3 forwards (target, online, actor step), the online backward with parameter
    # gradients and the actor step's backward to the action only. Actor (1 member):
    # 2 forwards (next action, actor step), 1 backward with parameter gradients.
    critic_norms = norm_kernels(2, batch, WIDTH, 3 * norms, 3 * depth, norms, norms)
    actor_norms = norm_kernels(1, batch, DEFAULTS.actor_width, 2 * actor_norms_per_pass,
                               2 * actor_depth, actor_norms_per_pass, 0)
    target_logits = torch.randn(2, batch, 101)
    online = torch.randn(2, batch, 101, requires_grad=True)

    def td_and_loss():
        target, _ = ops.categorical_td_target(target_logits, sample.reward, sample.mask,
                                              sample.discount, sample.reward, -10.0, 10.0)
        ops.categorical_cross_entropy(online, target).backward()

    def optimizers():
        agent.critic_optimizer.step_with_polyak(agent._target_params, agent.config.tau)
        agent.actor_optimizer.step()

    flops = iteration_flops(obs, act, tasks, WIDTH, batch, updates=1)
    rows = []
    for _ in range(rounds):
        floor = flops / (matmul_rate(obs, act, tasks, WIDTH, batch, 1.0) * 1e9)
        parts = {"adamw_polyak": median_time(optimizers),
                 "norm_kernels": median_time(critic_norms) + median_time(actor_norms),
                 "td_target_loss": median_time(td_and_loss)}
        update = median_time(lambda: agent.update(sample, denominator), 9)
        rows.append({"floor_ms": floor * 1e3, **{k: v * 1e3 for k, v in parts.items()},
                     "update_ms": update * 1e3, "bound": floor / (floor + sum(parts.values())),
                     "update_fraction": floor / update})
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the training loop
    results = {key: measure(key, args.rounds) for key in CONFIGS}
    print(f"{'config':6} {'floor ms':>9} {'AdamW+Polyak':>13} {'norm kernels':>13} "
          f"{'TD+loss':>8} {'bound':>6} {'update ms':>10} {'update fraction':>16}")
    for key, r in results.items():
        print(f"{key:6} {r['floor_ms']:9.2f} {r['adamw_polyak']:13.2f} {r['norm_kernels']:13.2f} "
              f"{r['td_target_loss']:8.2f} {r['bound']:6.3f} {r['update_ms']:10.2f} "
              f"{r['update_fraction']:16.3f}")
    print("RESULT " + json.dumps({"threads": torch.get_num_threads(), **results,
                                  "load_avg_1min": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
