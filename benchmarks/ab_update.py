"""Same-process A/B of the BRC update: networks.py/agent.py of a base commit vs the working tree.

  python benchmarks/ab_update.py [--base 6e756e8] [--tasks 1] [--batch 256] [--rounds 12] [--threads 1]

Both agents (width 512, same seed, same synthetic batches) run in one process, in interleaved
rounds, so a shared machine's load hits both alike. It reports the median wall and thread-CPU time
per iteration (2 updates). On a busy machine the CPU time is the number to read. Last line:
RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

import mtrl.agent as new_agent
from mtrl.config import AgentConfig

REPO = Path(__file__).resolve().parent.parent


def load_module(name: str, source: str, replace: tuple[tuple[str, str], ...] = ()) -> types.ModuleType:
    for old, new in replace:
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = name
    sys.modules[name] = module
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="6e756e8", help="git commit of the 'before' networks/agent")
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    def show(path: str) -> str:
        return subprocess.check_output(["git", "-C", str(REPO), "show", f"{args.base}:{path}"], text=True)

    load_module("base_networks", show("mtrl/networks.py"))
    base_agent = load_module("base_agent", show("mtrl/agent.py"),
                             (("from mtrl.networks import", "from base_networks import"),))
    t, b = args.tasks, args.batch
    obs, act = (17, 6) if t == 1 else (24, 6)  # cheetah-run / the 4-task padded dims
    torch.manual_seed(0)
    batches = [new_agent.Batch(
        obs=torch.randn(b, obs), action=torch.rand(b, act) * 2 - 1, reward=torch.rand(b),
        next_obs=torch.randn(b, obs), mask=torch.ones(b), discount=torch.full((b,), 0.99),
        task_id=torch.randint(0, t, (b,))) for _ in range(2)]
    denominator = torch.ones(t)
    agents = {}
    for name, module in (("before", base_agent), ("after", new_agent)):
        torch.manual_seed(1)
        agents[name] = module.BRCAgent(AgentConfig(critic_width=512), obs, act, t)
    wall: dict[str, list[float]] = {k: [] for k in agents}
    cpu: dict[str, list[float]] = {k: [] for k in agents}
    for _ in range(args.rounds):
        for name, agent in agents.items():
            for batch in batches:  # one untimed iteration per round (caches, allocator)
                agent.update(batch, denominator)
            for _ in range(2):
                t0, c0 = time.perf_counter(), time.thread_time()
                for batch in batches:
                    metrics = agent.update(batch, denominator)
                    bool(torch.isfinite(metrics["critic_loss"]))
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
    med = {k: (statistics.median(wall[k]) * 1e3, statistics.median(cpu[k]) * 1e3) for k in agents}
    print(f"tasks {t} batch {b} width 512 threads {args.threads} base {args.base}")
    for k, (w, c) in med.items():
        print(f"{k:7s} wall {w:8.1f} ms/iter  cpu {c:8.1f} ms/iter")
    result = {"tasks": t, "batch": b, "threads": args.threads, "base": args.base,
              "before_cpu_ms": round(med["before"][1], 1), "after_cpu_ms": round(med["after"][1], 1),
              "cpu_speedup": round(med["before"][1] / med["after"][1], 3),
              "wall_speedup": round(med["before"][0] / med["after"][0], 3)}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
