"""Same-process A/B of ``agent.update`` with the whole ``mtrl`` Python package of a base commit vs
the working tree, plus a bit-identity check of the two.

  python benchmarks/ab_update_tree.py [--base main] [--threads 2] [--rounds 80] [--width 512]
      [--actor-width 256] [--tasks 1] [--batch 256] [--emulate-cuda] [--bf16]

The base commit's ``mtrl/`` is extracted into a temporary directory as package ``mtrl_base``
(imports rewritten), except ``mtrl._core`` and ``mtrl.ops`` (the C++ core and the torch.library
ops, which can be registered once per process): both sides use the working tree's. So this
compares Python-side changes (agent, networks, optimizer, norm/bronet wrappers, ...), not C++ ones.

Both agents are built from the same seed on the same synthetic batch (by default single task, obs 17,
action 6, batch 256: ``bench_train.synthetic_agent``'s setup; ``--tasks 4 --width 256`` is the
laptop preset's update shape) and first run ``--check`` updates each, seeded
alike; every parameter, optimizer state entry and metric must then be bit-identical (else the
script exits 1). Then rounds alternate the order (base/new, new/base, ...), each timing one update
per side: thread CPU time with one thread (robust to other processes), wall time otherwise.
``--emulate-cuda``: both sides take the code paths of a CUDA agent, on the CPU
(count_update_ops.emulate_cuda_paths), so that changes to those paths are checked bit for bit too.
Reported: medians of each side and the median of the per-round ratios new/base. Last line:
RESULT {json}.
"""

from __future__ import annotations

import argparse
import contextlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from count_update_ops import emulate_cuda_paths, make_agent  # noqa: E402

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


def make(agent_module, config_module, width: int, actor_width: int = 256, tasks: int = 1,
         batch: int = 256, bf16: bool = False):
    return make_agent(agent_module, config_module, width, actor_width, batch, tasks, bf16)


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
    p.add_argument("--width", type=int, default=512, help="critic width")
    p.add_argument("--actor-width", type=int, default=256)
    p.add_argument("--tasks", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--bf16", action="store_true", help="AgentConfig.bf16 on both sides")
    p.add_argument("--emulate-cuda", action="store_true",
                   help="both sides on the code paths of a CUDA agent (on the CPU)")
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
    with contextlib.ExitStack() as paths:
        if args.emulate_cuda:
            paths.enter_context(emulate_cuda_paths("mtrl"))
            paths.enter_context(emulate_cuda_paths("mtrl_base"))
        return compare(args, base_agent, base_config, new_agent, new_config)


def compare(args, base_agent, base_config, new_agent, new_config) -> int:
    shape = (args.width, args.actor_width, args.tasks, args.batch, args.bf16)
    sides = {"base": make(base_agent, base_config, *shape),
             "new": make(new_agent, new_config, *shape)}

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
          f"width {args.width}, actor width {args.actor_width}, {args.tasks} task(s), batch "
          f"{args.batch}{', bf16' if args.bf16 else ''}{', CUDA paths' if args.emulate_cuda else ''}, {args.rounds} rounds of one "
          "update each)")
    print(f"{'median':8}{base_ms:10.2f}{new_ms:10.2f}")
    print(f"median per-round ratio new/base {statistics.median(ratios):.3f}; "
          f"median per-round saving {saved:.2f} ms")
    print("RESULT " + json.dumps({
        "base": args.base, "threads": args.threads, "width": args.width,
        "actor_width": args.actor_width, "tasks": args.tasks, "batch": args.batch,
        "bf16": args.bf16, "emulate_cuda": args.emulate_cuda, "clock": clock.__name__,
        "bit_identical": not diff, "base_ms": round(base_ms, 3), "new_ms": round(new_ms, 3),
        "ratio_median": round(statistics.median(ratios), 4),
        "saved_ms_median": round(saved, 3)}))
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
