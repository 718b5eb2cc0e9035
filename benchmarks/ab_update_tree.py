"""Same-process A/B of ``agent.update`` with the whole ``mtrl`` Python package of a base commit vs
the working tree, plus a bit-identity check of the two.

  python benchmarks/ab_update_tree.py [--base main] [--threads 2] [--rounds 80] [--width 512]

The base commit's ``mtrl/`` is extracted into a temporary directory as package ``mtrl_base``
(imports rewritten), except ``mtrl._core`` and ``mtrl.ops`` (the C++ core and the torch.library
ops, which can be registered once per process): both sides use the working tree's. So this
compares Python-side changes (agent, networks, optimizer, norm/bronet wrappers, ...), not C++ ones.

Both agents are built from the same seed on the same synthetic batch (single task, obs 17, action 6,
batch 256: ``bench_train.synthetic_agent``'s setup) and first run ``--check`` updates each, seeded
alike; every parameter, optimizer state entry and metric must then be bit-identical (else the
script exits 1). Then rounds alternate the order (base/new, new/base, ...), each timing one update
per side: thread CPU time with one thread (robust to other processes), wall time otherwise.
Reported: medians of each side and the median of the per-round ratios new/base. Last line:
RESULT {json}.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import mtrl  # noqa: F401,I001  (before torch, as the CLI)
import torch

REPO = Path(__file__).resolve().parent.parent


def extract_base(rev: str, into: Path) -> None:
    """``mtrl/`` of ``rev`` as package ``mtrl_base`` under ``into`` (imports rewritten)."""
    data = subprocess.check_output(["git", "-C", str(REPO), "archive", rev, "mtrl"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (into / "mtrl").rename(into / "mtrl_base")
    for path in (into / "mtrl_base").rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bfrom mtrl\.(?!ops\b)(\w+)", r"from mtrl_base.\1", text)
        text = re.sub(r"\bfrom mtrl import (?!_core\b|ops\b)", "from mtrl_base import ", text)
        text = re.sub(r"\bimport mtrl\.(?!ops\b)(\w+)", r"import mtrl_base.\1", text)
        path.write_text(text)


def make(agent_module, config_module, width: int):
    torch.manual_seed(0)
    obs, act, tasks, batch = 17, 6, 1, 256
    agent = agent_module.BRCAgent(config_module.AgentConfig(critic_width=width), obs, act, tasks)
    sample = agent_module.Batch(
        obs=torch.randn(batch, obs), action=torch.rand(batch, act) * 2 - 1,
        reward=torch.rand(batch), next_obs=torch.randn(batch, obs), mask=torch.ones(batch),
        discount=torch.full((batch,), 0.99), task_id=torch.randint(0, tasks, (batch,)))
    return agent, sample, torch.ones(tasks)


def flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items()
                for k, v in flatten(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree)
                for k, v in flatten(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def differences(a: dict, b: dict) -> list[str]:
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))
    return [k for k in a
            if not (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k])]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="main", help="git revision of the 'before' package")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=80)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--check", type=int, default=8, help="updates before the bit-identity check")
    args = p.parse_args()
    from mtrl.train import keep_freed_memory
    keep_freed_memory()  # as train() does
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        extract_base(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        base_agent = importlib.import_module("mtrl_base.agent")
        base_config = importlib.import_module("mtrl_base.config")
    import mtrl.agent as new_agent
    import mtrl.config as new_config
    sides = {"base": make(base_agent, base_config, args.width),
             "new": make(new_agent, new_config, args.width)}

    metrics = {}
    for i in range(args.check):
        for name, (agent, sample, denominator) in sides.items():
            torch.manual_seed(1000 + i)
            metrics[name] = agent.update(sample, denominator)
    diff = differences(flatten(sides["base"][0].full_state_dict()),
                       flatten(sides["new"][0].full_state_dict()))
    diff += differences(metrics["base"], metrics["new"])
    print(f"bit-identical after {args.check} updates: {not diff}"
          + ("" if not diff else f" (differ: {', '.join(diff[:8])})"))

    clock = time.thread_time if args.threads == 1 else time.perf_counter
    times = {"base": [], "new": []}
    for r in range(args.rounds):
        for name in ("base", "new") if r % 2 == 0 else ("new", "base"):
            agent, sample, denominator = sides[name]
            start = clock()
            agent.update(sample, denominator)
            times[name].append((clock() - start) * 1e3)
    ratios = [n / b for n, b in zip(times["new"], times["base"])]
    saved = statistics.median(b - n for b, n in zip(times["base"], times["new"]))
    base_ms, new_ms = statistics.median(times["base"]), statistics.median(times["new"])
    print(f"{'':8}{'base ms':>10}{'new ms':>10}   ({clock.__name__}, {args.threads} thread(s), "
          f"width {args.width}, {args.rounds} rounds of one update each)")
    print(f"{'median':8}{base_ms:10.2f}{new_ms:10.2f}")
    print(f"median per-round ratio new/base {statistics.median(ratios):.3f}; "
          f"median per-round saving {saved:.2f} ms")
    print("RESULT " + json.dumps({
        "base": args.base, "threads": args.threads, "width": args.width, "clock": clock.__name__,
        "bit_identical": not diff, "base_ms": round(base_ms, 3), "new_ms": round(new_ms, 3),
        "ratio_median": round(statistics.median(ratios), 4),
        "saved_ms_median": round(saved, 3)}))
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
