"""Host overhead of one ``BRCAgent.update``: aten ops per update and thread CPU time, on the CPU
path as it runs and on the path a CUDA agent takes (emulated on the CPU).

  python benchmarks/count_update_ops.py [--width 16] [--actor-width 16] [--batch 256]
      [--tasks 1 4] [--updates 20] [--rounds 200] [--bf16] [--base REV]

Per configuration (path x tasks x precision) on synthetic batches (obs 17, action 6, seeded):
  * top-level aten ops per update: ops called from Python or by the autograd engine, not those
    an op calls inside itself (e.g. bmm's resolve_conj), from torch.profiler events over
    ``--updates`` updates. On a GPU most of them are one kernel launch each (views excepted);
  * all aten events per update (nested ones included);
  * the most frequent top-level ops;
  * thread CPU time per update (median of ``--rounds``, one thread, profiler off). At width 16
    the matmuls are tiny, so this is mostly Python, autograd engine and op dispatch.

"cuda path": the gates that send a CUDA agent down other code are forced the CUDA way on the
CPU (see :func:`emulate_cuda_paths`): composed network ops instead of mtrl.fused_bronet's one
node, the PyTorch tanh-Gaussian instead of its kernel, torch's fused AdamW + ``_foreach_lerp_``
instead of the one-pass C++ step, and the TD ops' general (validating) path, which on CUDA ends
in the CUDA kernels instead of the CPU ones. Not emulated: ``_check_task_ids`` skips its
aminmax on CUDA (4 ops fewer), the CUDA cross-entropy backward multiplies the saved gradient
by the incoming 1 (2 ops more), and the CPU parts of torch ops (the CPU fused Adam's per-tensor
``item``) appear only as nested events. ``--bf16``: also each configuration under the agent's
bf16 autocast (needs AMX-BF16 / AVX512-BF16 here; the "cuda path" then runs the composed ops
under CPU autocast, as CUDA autocast would).

``--base REV``: also the ``mtrl/`` package of a git revision, imported as ``mtrl_base`` in this
process (benchmarks/ab_update_tree.py's extraction: the same C++ core and mtrl.ops), each
configuration counted and timed for both, timed in alternating order.

Last line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mtrl  # noqa: F401,I001  (before torch, as the CLI)
import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextlib.contextmanager
def emulate_cuda_paths(package: str = "mtrl"):
    """Within the body, agents of ``package`` (``mtrl``, or another copy of it such as
    benchmarks/ab_update_tree.py's ``mtrl_base``) take the code paths of a CUDA agent on the
    CPU: every check that would see a CUDA tensor answers as it would there. Restored on exit.
    mtrl.ops is shared by all copies (its fast CPU entry points then answer "not in kernel
    form", as for CUDA tensors)."""
    from mtrl.ops import _kernels

    def never(*args, **kwargs):
        return False

    def not_cpu(*args, **kwargs):
        return None

    patches = [(importlib.import_module(f"{package}.{name}"), "kernel_applies", never)
               for name in ("ensemble_norm", "networks", "tanh_gaussian")]
    patches.append((importlib.import_module(f"{package}.optim").FusedAdamW, "_step_in_one_pass",
                    never))
    patches += [(_kernels, "td_target_cpu_fast", not_cpu),
                (_kernels, "cross_entropy_cpu_fast", not_cpu)]
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def make_agent(agent_module, config_module, width: int, actor_width: int, batch: int,
               tasks: int, bf16: bool = False):
    """(agent, batch, denominator): seeded agent and synthetic batch (obs 17, action 6)."""
    torch.manual_seed(0)
    obs, act = 17, 6
    config = config_module.AgentConfig(critic_width=width, actor_width=actor_width, bf16=bf16)
    agent = agent_module.BRCAgent(config, obs, act, tasks)
    sample = agent_module.Batch(
        obs=torch.randn(batch, obs), action=torch.rand(batch, act) * 2 - 1,
        reward=torch.rand(batch), next_obs=torch.randn(batch, obs), mask=torch.ones(batch),
        discount=torch.full((batch,), 0.99), task_id=torch.randint(0, tasks, (batch,)))
    return agent, sample, torch.ones(tasks)


def _top_level(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def count_ops(agent, sample, denominator, updates: int) -> tuple[float, float, collections.Counter]:
    """(top-level aten ops per update, all aten events per update, Counter of top-level ops
    over ``updates`` updates)."""
    with profile() as prof:
        for _ in range(updates):
            agent.update(sample, denominator)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = collections.Counter(e.name for e in events if _top_level(e))
    return sum(top.values()) / updates, len(events) / updates, top


def thread_ms(sides: dict, rounds: int) -> dict[str, float]:
    """Median thread CPU time of one update per side (name -> (agent, batch, denominator)), ms;
    the sides take turns, in alternating order."""
    times = {name: [] for name in sides}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            agent, sample, denominator = sides[name]
            start = time.thread_time()
            agent.update(sample, denominator)
            times[name].append((time.thread_time() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16, help="critic width")
    p.add_argument("--actor-width", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 4])
    p.add_argument("--updates", type=int, default=20, help="profiled updates per configuration")
    p.add_argument("--rounds", type=int, default=200, help="timed updates per configuration")
    p.add_argument("--bf16", action="store_true", help="also the bf16 critic")
    p.add_argument("--top", type=int, default=12, help="most frequent ops listed per config")
    p.add_argument("--base", default=None, help="git revision to count and time alongside")
    args = p.parse_args()
    torch.set_num_threads(1)
    import mtrl.agent
    import mtrl.config
    packages = {"new": (mtrl.agent, mtrl.config)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            from ab_update_tree import extract_base
            extract_base(args.base, Path(tmp))
            sys.path.insert(0, tmp)
            packages["base"] = (importlib.import_module("mtrl_base.agent"),
                                importlib.import_module("mtrl_base.config"))
        return run(args, packages)


def run(args, packages: dict) -> int:
    results, rows = {}, []
    for path in ("cpu", "cuda"):
        for tasks in args.tasks:
            for bf16 in (False, True) if args.bf16 else (False,):
                key = f"{path}_t{tasks}" + ("_bf16" if bf16 else "")
                with contextlib.ExitStack() as paths:
                    if path == "cuda":
                        for name in packages:
                            paths.enter_context(emulate_cuda_paths(
                                "mtrl" if name == "new" else "mtrl_base"))
                    sides = {name: make_agent(agent_module, config_module, args.width,
                                              args.actor_width, args.batch, tasks, bf16)
                             for name, (agent_module, config_module) in packages.items()}
                    for agent, sample, denominator in sides.values():
                        for _ in range(10):  # optimizer state, caches
                            agent.update(sample, denominator)
                    # (timed first: the profiler leaves the process slower for a while)
                    ms = thread_ms(sides, args.rounds)
                    for name, (agent, sample, denominator) in sides.items():
                        top_ops, all_ops, counts = count_ops(agent, sample, denominator,
                                                             args.updates)
                        label = key if name == "new" else f"{key}_base"
                        results[label] = {"top_level_ops": round(top_ops, 1), "all_aten_events":
                                          round(all_ops, 1), "thread_ms": round(ms[name], 3)}
                        rows.append((label, top_ops, all_ops, ms[name]))
                        common = ", ".join(f"{op[6:]} {n / args.updates:g}"
                                           for op, n in counts.most_common(args.top))
                        print(f"{label}: {common}", flush=True)
    print(f"\ncritic width {args.width}, actor width {args.actor_width}, batch {args.batch}, "
          f"1 thread, torch {torch.__version__}" + (f", base {args.base}" if args.base else ""))
    print(f"{'config':18}{'top-level ops':>14}{'all aten':>10}{'thread ms':>11}")
    for label, top_ops, all_ops, ms in rows:
        print(f"{label:18}{top_ops:14.1f}{all_ops:10.1f}{ms:11.3f}")
    print("RESULT " + json.dumps({"width": args.width, "actor_width": args.actor_width,
                                  "batch": args.batch, "base": args.base, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
