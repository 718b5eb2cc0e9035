"""GPU check of the fused TD-target kernels: parity with the reference, time, achieved bandwidth.

Run on a machine with a CUDA GPU after building mtrl with CUDA (benchmarks/gpu_td_target.sh does
both). For B in {256, 1024, 4096, 16384} and K in {51, 101} (E = 2) it
  1. checks the CUDA target, loss, td_error and gradient against the PyTorch reference on random
     inputs (never zeros; rewards inside and outside the support; float32 and bfloat16 logits),
     and the target of each input set below against the float64 reference,
  2. times the kernels inside a CUDA graph (20 calls per replay, so launch overhead is excluded),
     and the eager reference for comparison,
  3. prints the achieved memory bandwidth (minimum bytes each op must move / time) and its share
     of the device's measured copy bandwidth.
The target is timed on three input sets of the same size, side by side:
  - "brc": discount 0.99, mask 1 for ~70% of rows, rewards N(0.05, 15^2) on a [-10, 10] support
    (the input set of the earlier RESULTS rows; mask-0 rows take the terminal projection),
  - "shift": the same with mask 1 everywhere: every row takes the shift projection,
  - "scan": discount 0.9, mask 1, rewards N(0.05, 3^2): (almost) every row takes the scan
    projection ((1 - 0.9)(K - 1) > 2 and few rows are clipped enough to fit the shift).
The share of rows on the shift path is computed on the host by ``shift_rows`` (the kernel's
PlanShift in float64) and printed. Each set is also checked and timed with the target kernel's
row layouts forced (one and two threads per row, 16 and 32 lanes per row; by default a warp per
row up to 24 rows per multiprocessor, 8 lanes for larger batches at K <= 128), printed in a second
table. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json

import torch

import mtrl
from mtrl.ops import (
    categorical_cross_entropy,
    categorical_cross_entropy_reference,
    categorical_td_target,
    categorical_td_target_reference,
)
from mtrl.ops import _kernels
from mtrl.ops.shift_plan import shift_rows

E = 2
FORCED_LANES = (1, 2, 16, 32)  # row layouts timed beside the launcher's choice


def make_inputs(b, k, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(E, b, k, device="cuda", generator=gen) * 3 + 0.1).to(dtype)
    reward = torch.randn(b, device="cuda", generator=gen) * 15 + 0.05
    mask = (torch.rand(b, device="cuda", generator=gen) > 0.3).float()
    entropy = torch.randn(b, device="cuda", generator=gen) * 0.5 + 0.01
    online = (torch.randn(E, b, k, device="cuda", generator=gen) * 2).to(dtype)
    return logits, reward, mask, entropy, online


def make_set(name, b, k, dtype, seed):
    """Target inputs of one timed input set (see the module docstring): logits, reward, mask,
    discount (a float), entropy."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(E, b, k, device="cuda", generator=gen) * 3 + 0.1).to(dtype)
    scale = 3.0 if name == "scan" else 15.0
    reward = torch.randn(b, device="cuda", generator=gen) * scale + 0.05
    if name == "brc":
        mask = (torch.rand(b, device="cuda", generator=gen) > 0.3).float()
    else:
        mask = torch.ones(b, device="cuda")
    entropy = torch.randn(b, device="cuda", generator=gen) * 0.5 + 0.01
    return logits, reward, mask, 0.9 if name == "scan" else 0.99, entropy


def check_target_parity(logits, reward, mask, discount, entropy):
    """Max |target - float64 reference|, |expected value - reference|, |row sum - 1|."""
    target, value = categorical_td_target(logits, reward, mask, discount, entropy)
    ref_t, ref_v = categorical_td_target_reference(logits.double(), reward.double(), mask.double(),
                                                   discount, entropy.double(), v_min=-10, v_max=10)
    errors = {
        "target": (target.double() - ref_t).abs().max().item(),
        "value": (value.double() - ref_v).abs().max().item(),
        "row_sum": (target.double().sum(-1) - 1).abs().max().item(),
    }
    ok = errors["target"] < 3e-5 and errors["row_sum"] < 1e-6 and errors["value"] < 1e-4
    return ok, errors


def check_parity(b, k, dtype):
    logits, reward, mask, entropy, online = make_inputs(b, k, dtype, seed=b + k)
    target, value = categorical_td_target(logits, reward, mask, 0.99, entropy)
    ref_t, ref_v = categorical_td_target_reference(logits.float(), reward, mask, 0.99, entropy,
                                                   v_min=-10, v_max=10)
    online.requires_grad_()
    loss, td = categorical_cross_entropy(online, target, return_td_error=True)
    loss.backward()
    ref_online = online.detach().float().requires_grad_()
    ref_loss, ref_td = categorical_cross_entropy_reference(ref_online, target, return_td_error=True)
    ref_loss.backward()
    errors = {
        "target": (target - ref_t).abs().max().item(),
        "value": (value - ref_v).abs().max().item(),
        "row_sum": (target.sum(-1) - 1).abs().max().item(),
        "loss": abs(loss.item() - ref_loss.item()),
        "td_error": (td - ref_td).abs().max().item(),
        "grad": (online.grad.float() - ref_online.grad).abs().max().item(),
    }
    # bf16 gradients carry 8 significant bits: compare relative to the reference gradient.
    atol, rtol = (1e-7, 1e-4) if dtype == torch.float32 else (1e-6, 1e-2)
    grad_ok = bool(((online.grad.float() - ref_online.grad).abs()
                    <= atol + rtol * ref_online.grad.abs()).all())
    ok = (errors["target"] < 3e-5 and errors["row_sum"] < 1e-6 and errors["value"] < 1e-4
          and errors["loss"] < 1e-3 and errors["td_error"] < 1e-3 and grad_ok)
    return ok, errors


def graph_time_us(fn, calls=20, replays=30):
    """Median GPU time of one fn() call, from CUDA-graph replays of `calls` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def eager_time_us(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def copy_bandwidth_gbs():
    src = torch.empty(256 * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    t = graph_time_us(lambda: dst.copy_(src), calls=5, replays=20)
    return 2 * src.numel() * 4 / (t * 1e-6) / 1e9


def copy_time_us(nbytes: int) -> float:
    """One device copy moving ``nbytes`` in all (half read, half written), timed as the ops are:
    the scale for an op of that traffic (at tens of MB a copy itself stays below the 256 MB
    copy's rate: launch, ramp-up and tail weigh more)."""
    src = torch.empty(max(nbytes // 8, 1), device="cuda")
    dst = torch.empty_like(src)
    return graph_time_us(lambda: dst.copy_(src))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {1024, 16384}, K = 101 only")
    args = parser.parse_args()
    if not (torch.cuda.is_available() and mtrl.cuda_available()):
        raise SystemExit("needs a CUDA device and mtrl built with CUDA (mtrl.cuda_available())")
    device = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth_gbs()
    batches = [1024, 16384] if args.quick else [256, 1024, 4096, 16384]
    atoms = [101] if args.quick else [51, 101]
    result = {"device": device, "copy_bandwidth_gbs": round(copy_bw, 1), "parity_ok": True}
    sets = ("brc", "shift", "scan")
    layouts = []  # lines of the forced-layout table
    print(f"device: {device}; measured copy bandwidth {copy_bw:.0f} GB/s; E = {E}")
    print("target us (%copy) per input set: brc = discount 0.99, 70% mask 1; shift = 0.99, mask 1; "
          "scan = discount 0.9; [share of rows on the shift path]")
    head = " ".join(f"{n + ' us':>9} {'%cp':>3}" for n in sets)
    print(f"{'dtype':>9} {'B':>6} {'K':>4} | {head} | {'loss us':>8} {'%cp':>3} | "
          f"{'ref eager us':>12} | shift rows | parity max err | same-bytes copy us %cp")
    for dtype in (torch.float32, torch.bfloat16):
        elem = torch.finfo(dtype).bits // 8
        for k in atoms:
            for b in batches:
                ok, errors = check_parity(b, k, dtype)
                # Minimum traffic: logits in; reward, mask, entropy in; target and value out
                # (target op). Logits and target in; gradient, td_error out (loss op).
                bytes_target = E * b * k * elem + 3 * b * 4 + b * k * 4 + b * 4
                bytes_loss = 2 * E * b * k * elem + b * k * 4 + b * 4
                name = str(dtype).replace("torch.", "")
                key = f"{name}_{b}_{k}"
                t_sets, shares = {}, {}
                for set_name in sets:
                    inputs = make_set(set_name, b, k, dtype, seed=b + k + len(set_name))
                    set_ok, set_errors = check_target_parity(*inputs)
                    ok &= set_ok
                    errors.update({f"{set_name}_{n}": v for n, v in set_errors.items()})
                    logits, reward, mask, discount, entropy = inputs
                    rows = shift_rows(reward, mask, discount, entropy, k)
                    shares[set_name] = rows.float().mean().item()
                    for lanes in (0, *FORCED_LANES):
                        _kernels.CUDA_TARGET_ROW_LANES = lanes
                        tag = "" if lanes == 0 else f"_lanes{lanes}"
                        if lanes:
                            set_ok, set_errors = check_target_parity(*inputs)
                            ok &= set_ok
                            errors.update({f"{set_name}{tag}_{n}": v
                                           for n, v in set_errors.items()})
                        t = graph_time_us(lambda: categorical_td_target(
                            logits, reward, mask, discount, entropy, check_finite=False))
                        pct = 100 * bytes_target / (t * 1e-6) / 1e9 / copy_bw
                        result[f"target_{set_name}{tag}_us_{key}"] = round(t, 2)
                        result[f"target_{set_name}{tag}_pct_copy_bw_{key}"] = round(pct, 1)
                    _kernels.CUDA_TARGET_ROW_LANES = 0
                    t_sets[set_name] = result[f"target_{set_name}_us_{key}"]
                    result[f"target_{set_name}_shift_rows_{key}"] = round(shares[set_name], 3)
                result["parity_ok"] &= ok
                logits, reward, mask, entropy, online = make_inputs(b, k, dtype, seed=1)
                target, _ = categorical_td_target(logits, reward, mask, 0.99, entropy)
                online.requires_grad_()
                t_loss = graph_time_us(lambda: torch.ops.mtrl.categorical_cross_entropy(
                    online.detach(), target, None, True, False))
                ref_online = online.detach().float().requires_grad_()

                def reference():
                    y, _ = categorical_td_target_reference(logits, reward, mask, 0.99, entropy,
                                                           v_min=-10, v_max=10)
                    categorical_cross_entropy_reference(ref_online, y).backward()

                t_ref = eager_time_us(reference)
                t_copy = copy_time_us(bytes_target)  # a copy of the target op's traffic
                copy_pct = 100 * bytes_target / (t_copy * 1e-6) / 1e9 / copy_bw
                bw_l = bytes_loss / (t_loss * 1e-6) / 1e9
                cols = " ".join(f"{t_sets[n]:9.1f} {result[f'target_{n}_pct_copy_bw_{key}']:3.0f}"
                                for n in sets)
                share_txt = "/".join(f"{shares[n]:.2f}" for n in sets)
                print(f"{name:>9} {b:>6} {k:>4} | {cols} | {t_loss:8.1f} "
                      f"{100 * bw_l / copy_bw:3.0f} | {t_ref:12.1f} | {share_txt:>10} | "
                      f"{'ok' if ok else 'FAIL'} {max(errors.values()):.1e} | "
                      f"{t_copy:8.1f} {copy_pct:3.0f}")
                layouts.append(f"{name:>9} {b:>6} {k:>4} | " + " | ".join(
                    " ".join(f"{result[f'target_{n}_lanes{lanes}_us_{key}']:9.1f} "
                             f"{result[f'target_{n}_lanes{lanes}_pct_copy_bw_{key}']:3.0f}"
                             for n in sets) for lanes in FORCED_LANES))
                if not ok:
                    print("  parity errors: "
                          + ", ".join(f"{n} {v:.1e}" for n, v in errors.items()))
                # Keys of the earlier runs: the "brc" input set.
                result[f"target_us_{key}"] = result[f"target_brc_us_{key}"]
                result[f"target_pct_copy_bw_{key}"] = result[f"target_brc_pct_copy_bw_{key}"]
                result[f"loss_us_{key}"] = round(t_loss, 2)
                result[f"loss_pct_copy_bw_{key}"] = round(100 * bw_l / copy_bw, 1)
                result[f"ref_eager_fwdbwd_us_{key}"] = round(t_ref, 1)
                result[f"copy_target_bytes_us_{key}"] = round(t_copy, 2)
                result[f"copy_target_bytes_pct_copy_bw_{key}"] = round(copy_pct, 1)
    print(f"\nthe same sets with the row layout forced (target us %copy; parity checked): "
          + " | ".join(f"{lanes} {'thread' if lanes == 1 else 'threads' if lanes == 2 else 'lanes'} "
                       f"per row: {' '.join(sets)}" for lanes in FORCED_LANES))
    print("\n".join(layouts))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
