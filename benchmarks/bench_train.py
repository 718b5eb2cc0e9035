"""Iterations per second of the full training loop (every task steps once + 2 updates) vs this
machine's matmul floor at the critic's shapes and layouts, measured in the same run.

  python benchmarks/bench_train.py [--quick] [--threads N] [--compile] [--breakdown] [--bf16]

Configs (issue 4): width 512 / batch 256 / single task cheetah-run, and width 512 / batch 1024 /
4 tasks (cheetah-run, walker-walk, cartpole-swingup, reacher-easy). The loop is `mtrl.train.train`
itself; its per-window it/s (eval and checkpoint time excluded) is read back from train.csv and the
median over the post-warm-up windows is reported. Floor = measured bmm GFLOP/s at the critic's
layer shapes, in the mix of layouts an update runs (forwards, input gradients, weight gradients;
see matmul_rate) / analytic FLOPs per iteration. The forward-only rate and the fraction against it
are reported too. The floor's rate is FLOPs over the median single pass of the probe (~20-40 ms),
which a stall of the shared VM rarely hits, while the loop's it/s is a mean over log windows of
~1-3 s that include every stall; `*_floor_fraction_windowed` therefore also reports the fraction
against the same probe timed the loop's way (>= 1 s windows, median of window means). Last line:
RESULT {json}.

--bf16 (CPU with AMX-BF16 / AVX512-BF16): per config also the loop with AgentConfig.bf16, run
right after the float32 loop (same process, alternating order over --repeats rounds), the
bf16/float32 it/s ratio, one update's time in both precisions timed alternately on synthetic
batches (the steadier ratio on a shared machine), and the bf16 bmm rate at the critic's shapes.
The float32 keys and the floor fraction (a float32 metric) are unchanged.

--paper (CUDA only): width 4096 / batch 1024 / the 4 tasks, one loop per precision variant in one
process: float32 (IEEE), AgentConfig.tf32, AgentConfig.bf16 and both (keys it_per_s_w4096_mt4_
fp32 / _tf32 / _bf16 / _bf16_tf32), plus the relative error of one 1024^3 CUDA matmul in IEEE and
in TF32 against float64, which shows whether TF32 was in effect on this GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time

import mtrl  # noqa: F401,I001  (before torch: the OpenMP spin count the CLI runs with; mtrl/__init__.py)
import torch

from mtrl.config import AgentConfig, BufferConfig, EnvConfig, TrainConfig
from mtrl.networks import critic_forward_flops
from mtrl.train import train

MT4 = ("cheetah-run", "walker-walk", "cartpole-swingup", "reacher-easy")


def actor_fwd_flops(d_in: int, width: int, action_dim: int) -> int:
    return 2 * (d_in * width + 2 * width * width + width * 2 * action_dim)


def iteration_flops(obs: int, act: int, tasks: int, width: int, batch: int, updates: int = 2) -> int:
    """Per update: target fwd (1x), online fwd+bwd (3x), actor-step critic fwd + input-grad bwd (2x)
    = 6 critic forwards; actor: next-action fwd (1x) + actor step fwd+bwd (3x)."""
    emb = 32 if tasks > 1 else 0
    critic = critic_forward_flops(obs + act + emb, width, 2, 101, 2)
    actor = actor_fwd_flops(obs + emb, 256, act)
    return updates * batch * (6 * critic + 4 * actor)


def matmul_rate(obs: int, act: int, tasks: int, width: int, batch: int, seconds: float,
                mix: bool = True, dtype: torch.dtype = torch.float32,
                window: float | None = None) -> float | tuple[float, float]:
    """Measured GFLOP/s of the critic's batched matmuls (E=2) at this batch size.

    mix=True times the layouts one update runs, per layer: 3 forwards x @ W (target, online, actor
    step), 2 input gradients dy @ W^T (online, actor step) and 1 weight gradient x^T @ dy (online),
    each as autograd issues it (transposed views, no copies). mix=False times the forwards only.
    dtype=torch.bfloat16: the bf16 path's matmuls (bf16 in and out, float32 accumulation).

    The rate is FLOPs / the median time of one pass (~20-40 ms), which leaves out the stalls a
    shared VM puts into some passes. The loop's it/s is a mean over log windows (~1-3 s), stalls
    included. window=W seconds also returns the rate measured the loop's way: passes run back to
    back in windows of >= W seconds, FLOPs / elapsed per window, median over windows; the result
    is then (per-pass rate, windowed rate)."""
    emb = 32 if tasks > 1 else 0
    shapes = [(obs + act + emb, width)] + [(width, width)] * 4 + [(width, 101)]
    xs = [torch.randn(2, batch, i, dtype=dtype) for i, _ in shapes]
    ws = [torch.randn(2, i, o, dtype=dtype) for i, o in shapes]
    dys = [torch.randn(2, batch, o, dtype=dtype) for _, o in shapes]
    per_layer = 6 if mix else 1
    flops = sum(per_layer * 2 * 2 * batch * i * o for i, o in shapes)

    def run():
        for x, w, dy in zip(xs, ws, dys):
            torch.bmm(x, w)
            if mix:
                torch.bmm(x, w)
                torch.bmm(x, w)
                torch.bmm(dy, w.transpose(1, 2))
                torch.bmm(dy, w.transpose(1, 2))
                torch.bmm(x.transpose(1, 2), dy)
    for _ in range(3):
        run()
    reps = []
    windows = []  # (passes, seconds) of back-to-back windows of >= `window` seconds
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end or len(reps) < 5 or (window and not windows):
        t = time.perf_counter()
        run()
        now = time.perf_counter()
        reps.append(now - t)
        if window and now - start >= window:
            windows.append((len(reps) - sum(n for n, _ in windows), now - start))
            start = now
    per_pass = flops / statistics.median(reps) / 1e9
    if not window:
        return per_pass
    return per_pass, statistics.median(n * flops / secs for n, secs in windows) / 1e9


def synthetic_agent(obs: int, act: int, tasks: int, width: int, batch: int, warm_updates: int = 5,
                    bf16: bool = False):
    """(agent, batch, reward denominator): a fresh seeded agent after ``warm_updates`` updates on
    one random batch, so its optimizer state and gradients exist (update-only measurements)."""
    from mtrl.agent import Batch, BRCAgent
    torch.manual_seed(0)
    agent = BRCAgent(AgentConfig(critic_width=width, bf16=bf16), obs, act, tasks)
    sample = Batch(obs=torch.randn(batch, obs), action=torch.rand(batch, act) * 2 - 1,
                   reward=torch.rand(batch), next_obs=torch.randn(batch, obs),
                   mask=torch.ones(batch), discount=torch.full((batch,), 0.99),
                   task_id=torch.randint(0, tasks, (batch,)))
    denominator = torch.ones(tasks)
    for _ in range(warm_updates):
        agent.update(sample, denominator)
    return agent, sample, denominator


def update_breakdown(obs: int, act: int, tasks: int, width: int, batch: int, updates: int = 20):
    """Where one update's time goes (torch profiler, synthetic batches, this process's threads):
    ms per update for matmuls, the fused critic-layer / TD ops, AdamW + Polyak, and the rest
    (Python, autograd, small ops), plus the matmuls' in-update GFLOP/s."""
    from torch.profiler import profile

    agent, batch_, denominator = synthetic_agent(obs, act, tasks, width, batch)
    # The optimizer steps run in C++ (mtrl.optim) and show up as no op: label them.
    for opt, method in ((agent.critic_optimizer, "step_with_polyak"), (agent.actor_optimizer, "step")):
        def labelled(*args, _step=getattr(opt, method), **kwargs):
            with torch.profiler.record_function("mtrl::adamw_polyak"):
                return _step(*args, **kwargs)
        setattr(opt, method, labelled)
    with profile() as prof:
        start = time.perf_counter()
        for _ in range(updates):
            agent.update(batch_, denominator)
        wall = (time.perf_counter() - start) / updates * 1e3
    groups = {"matmul": ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"),
              # the one-node networks' and the fused ops' own time: C++ kernels + their Python
              "fused layers/TD": ("_BroNetFunction", "_EnsembleNorm", "_CrossEntropy", "_TdTarget",
                                  "_TanhGaussian", "mtrl::categorical", "mtrl::scale"),
              "AdamW+Polyak": ("mtrl::adamw_polyak", "aten::_fused_adamw_", "aten::_foreach_lerp_",
                               "aten::lerp_")}
    ms = dict.fromkeys(groups, 0.0)
    for event in prof.key_averages():
        for name, prefixes in groups.items():
            if event.key.startswith(prefixes):
                ms[name] += event.self_cpu_time_total / 1e3 / updates
    ms = {k: round(v, 2) for k, v in ms.items()}
    ms["rest"] = round(wall - sum(ms.values()), 2)
    flops = iteration_flops(obs, act, tasks, width, batch, updates=1)
    return {"update_ms": round(wall, 2), **ms,
            "matmul_gflops_in_update": round(flops / (ms["matmul"] * 1e-3) / 1e9, 1)}


def update_ms_alternating(obs: int, act: int, tasks: int, width: int, batch: int, rounds: int,
                          per_round: int = 3) -> tuple[float, float]:
    """Median ms of one update, (float32, bf16), timed in alternating rounds of ``per_round``
    updates on the same synthetic batch, so both see the same phases of a shared machine."""
    agents = [synthetic_agent(obs, act, tasks, width, batch, bf16=bf16) for bf16 in (False, True)]
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            agent, sample, denominator = agents[i]
            start = time.perf_counter()
            for _ in range(per_round):
                agent.update(sample, denominator)
            times[i].append((time.perf_counter() - start) / per_round * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def dims(tasks) -> tuple[int, int]:
    import mtrl.envs

    with mtrl.envs.make(list(tasks)) as pool:
        return pool.obs_dim, pool.action_dim


def loop_rate(tasks, width, batch, iters, window, compile_, threads, device="cpu",
              bf16=False, tf32=False) -> tuple[float, int, int]:
    obs, act = dims(tasks)
    warm = max(window, -(-batch // len(tasks)))
    warm = -(-warm // window) * window
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(
            env=EnvConfig(tasks=tuple(tasks)),
            agent=AgentConfig(critic_width=width, compile=compile_, bf16=bf16, tf32=tf32),
            buffer=BufferConfig(capacity_per_task=warm + iters + 10, batch_size=batch),
            iterations=warm + iters, random_iterations=warm, eval_interval=10**9, eval_episodes=1,
            log_interval=window, checkpoint_interval=0, run_dir=run_dir, tensorboard=False,
            progress="lines", torch_threads=threads, seed=0, device=device)
        train(cfg)
        with open(f"{run_dir}/train.csv") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) > warm]
    speeds = [float(r["train/it_per_s"]) for r in rows]
    if compile_:
        speeds = speeds[1:] or speeds  # first window holds the compilation
    return statistics.median(speeds), obs, act


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations (a few minutes)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the critic")
    p.add_argument("--breakdown", action="store_true",
                   help="also profile one update per config: matmul / fused kernels / AdamW+Polyak / rest")
    p.add_argument("--bf16", action="store_true",
                   help="also AgentConfig.bf16 (CPU with AMX-BF16 / AVX512-BF16): it/s, ratio, "
                        "update ms alternating, bf16 bmm rate")
    p.add_argument("--repeats", type=int, default=1,
                   help="with --bf16: float32/bf16 loop pairs per config (order alternates)")
    p.add_argument("--paper", action="store_true",
                   help="CUDA only: paper configuration (width 4096, batch 1024, 4 tasks) in "
                        "float32, tf32, bf16 and bf16 + tf32")
    args = p.parse_args()
    if args.paper:
        return paper(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16:
        from mtrl.fused_bronet import check_cpu_bf16
        try:
            check_cpu_bf16()
        except ValueError as e:  # one line naming the missing instructions, not a traceback
            raise SystemExit(f"--bf16: {e}") from None
    st_iters, mt_iters, window = (60, 30, 10) if args.quick else (300, 120, 30)
    print(f"device: CPU, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"compile {args.compile}", flush=True)
    results = {}
    table = []
    for key, tasks, batch, iters in (("st", ("cheetah-run",), 256, st_iters),
                                     ("mt4", MT4, 1024, mt_iters)):
        secs = 3.0 if args.quick else 8.0
        obs, act = dims(tasks)
        before, before_windowed = matmul_rate(obs, act, len(tasks), 512, batch, secs, window=1.0)
        fwd_rate = matmul_rate(obs, act, len(tasks), 512, batch, secs / 2, mix=False)
        speeds = {False: [], True: []}
        for r in range(args.repeats if args.bf16 else 1):
            for bf16 in ((False, True) if r % 2 == 0 else (True, False)) if args.bf16 else (False,):
                speeds[bf16].append(loop_rate(tasks, 512, batch, iters, window, args.compile,
                                              args.threads, bf16=bf16)[0])
        speed = statistics.median(speeds[False])
        after, after_windowed = matmul_rate(obs, act, len(tasks), 512, batch, secs, window=1.0)
        rate = (before + after) / 2  # the machine is shared: bracket the loop
        flops = iteration_flops(obs, act, len(tasks), 512, batch)
        floor = rate * 1e9 / flops
        results[f"it_per_s_w512_{key}"] = round(speed, 3)
        results[f"w512_{key}_floor_it_per_s"] = round(floor, 3)
        results[f"w512_{key}_floor_fraction"] = round(speed / floor, 3)
        results[f"w512_{key}_matmul_gflops"] = round(rate, 1)
        # The same probe timed as the loop is (>= 1 s windows, stalls included): see matmul_rate.
        windowed = (before_windowed + after_windowed) / 2
        results[f"w512_{key}_windowed_matmul_gflops"] = round(windowed, 1)
        results[f"w512_{key}_floor_fraction_windowed"] = round(speed * flops / (windowed * 1e9), 3)
        # The forward-only rate (this benchmark's floor before the update mix was timed).
        results[f"w512_{key}_fwd_matmul_gflops"] = round(fwd_rate, 1)
        results[f"w512_{key}_floor_fraction_fwd_rate"] = round(speed * flops / (fwd_rate * 1e9), 3)
        table.append((key, len(tasks), batch, obs, act, speed, rate, fwd_rate, flops / 1e9, floor,
                      speed * flops / (windowed * 1e9)))
        if args.bf16:
            bf16_speed = statistics.median(speeds[True])
            results[f"it_per_s_w512_{key}_bf16"] = round(bf16_speed, 3)
            results[f"w512_{key}_bf16_it_per_s_ratio"] = round(bf16_speed / speed, 3)
            results[f"w512_{key}_it_per_s_runs"] = {"fp32": [round(v, 2) for v in speeds[False]],
                                                    "bf16": [round(v, 2) for v in speeds[True]]}
            fp32_ms, bf16_ms = update_ms_alternating(obs, act, len(tasks), 512, batch,
                                                     rounds=6 if args.quick else 12)
            results[f"w512_{key}_update_ms"] = {"fp32": round(fp32_ms, 2), "bf16": round(bf16_ms, 2)}
            results[f"w512_{key}_update_bf16_speedup"] = round(fp32_ms / bf16_ms, 3)
            bf16_rate = matmul_rate(obs, act, len(tasks), 512, batch, secs, dtype=torch.bfloat16)
            results[f"w512_{key}_bf16_matmul_gflops"] = round(bf16_rate, 1)
            print(f"{key}: bf16 {bf16_speed:.2f} it/s vs fp32 {speed:.2f} it/s "
                  f"(x{bf16_speed / speed:.2f}); update {bf16_ms:.1f} vs {fp32_ms:.1f} ms "
                  f"(x{fp32_ms / bf16_ms:.2f}); bf16 bmm {bf16_rate:.1f} GF/s vs fp32 {rate:.1f}",
                  flush=True)
        if args.breakdown:
            parts = update_breakdown(obs, act, len(tasks), 512, batch)
            results[f"w512_{key}_update_breakdown_ms"] = parts
            print(f"{key}: one update (profiled) {parts}", flush=True)
    print(f"{'config':6} {'T':>2} {'B':>5} {'obs':>4} {'act':>3} {'it/s':>7} {'bmm GF/s':>9} "
          f"{'fwd GF/s':>9} {'GF/it':>6} {'floor it/s':>10} {'fraction':>8} {'windowed':>8}")
    for key, t, b, o, a, s, r, fr, f, fl, fw in table:
        print(f"{key:6} {t:2d} {b:5d} {o:4d} {a:3d} {s:7.2f} {r:9.1f} {fr:9.1f} {f:6.2f} {fl:10.2f} "
              f"{s / fl:8.2f} {fw:8.2f}")
    results["threads"] = torch.get_num_threads()
    results["load_avg_1min"] = round(os.getloadavg()[0], 2)  # the machine may be shared
    print("RESULT " + json.dumps(results), flush=True)
    return 0


# (RESULT key suffix, AgentConfig.bf16, AgentConfig.tf32) of the --paper loops, in run order.
PAPER_VARIANTS = (("fp32", False, False), ("tf32", False, True), ("bf16", True, False),
                  ("bf16_tf32", True, True))


def matmul_rel_errors(n: int = 1024, device: str = "cuda") -> dict[str, float]:
    """Max |error| / max |exact| of one (n, n) @ (n, n) float32 matmul against float64, in IEEE
    float32 and in TF32 (mtrl.precision): ~1e-7 and ~1e-3 where TF32 is in effect (on a CPU
    device both are IEEE: the flag is CUDA's)."""
    from mtrl.precision import cuda_matmul_precision

    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=g) for _ in range(2))
    exact = a.double() @ b.double()
    errors = {}
    for name, tf32 in (("ieee", False), ("tf32", True)):
        with cuda_matmul_precision(tf32):
            errors[name] = ((a @ b).double() - exact).abs().max().item() / exact.abs().max().item()
    return errors


def paper(args) -> int:
    """Width 4096 / batch 1024 / the 4 tasks on CUDA, in each of PAPER_VARIANTS."""
    if not torch.cuda.is_available():
        print("--paper needs a CUDA device")
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    errors = matmul_rel_errors()
    results = {f"matmul_rel_err_{k}": float(f"{v:.3g}") for k, v in errors.items()}
    print(f"1024^3 matmul relative error vs float64: IEEE {errors['ieee']:.2e}, "
          f"TF32 {errors['tf32']:.2e}", flush=True)
    for key, bf16, tf32 in PAPER_VARIANTS:
        speed, _, _ = loop_rate(MT4, 4096, 1024, 60 if args.quick else 200, 20, args.compile,
                                args.threads, device="cuda", bf16=bf16, tf32=tf32)
        results[f"it_per_s_w4096_mt4_{key}"] = round(speed, 3)
        print(f"width 4096 batch 1024 4 tasks bf16={bf16} tf32={tf32}: {speed:.2f} it/s",
              flush=True)
    for key, _, _ in PAPER_VARIANTS[1:]:
        results[f"w4096_mt4_{key}_vs_fp32"] = round(
            results[f"it_per_s_w4096_mt4_{key}"] / results["it_per_s_w4096_mt4_fp32"], 3)
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
