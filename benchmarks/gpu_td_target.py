"""GPU check of the fused TD-target kernels: parity with the reference, time, achieved bandwidth.

Run on a machine with a CUDA GPU after building mtrl with CUDA (benchmarks/gpu_td_target.sh does
both). For B in {256, 1024, 4096, 16384} and K in {51, 101} (E = 2) it
  1. checks the CUDA target, loss, td_error and gradient against the PyTorch reference on random
     inputs (never zeros; rewards inside and outside the support; float32 and bfloat16 logits),
  2. times the kernels inside a CUDA graph (20 calls per replay, so launch overhead is excluded),
     and the eager reference for comparison,
  3. prints the achieved memory bandwidth (minimum bytes each op must move / time) and its share
     of the device's measured copy bandwidth.
The last line is ``RESULT {json}``.
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

E = 2


def make_inputs(b, k, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(E, b, k, device="cuda", generator=gen) * 3 + 0.1).to(dtype)
    reward = torch.randn(b, device="cuda", generator=gen) * 15 + 0.05
    mask = (torch.rand(b, device="cuda", generator=gen) > 0.3).float()
    entropy = torch.randn(b, device="cuda", generator=gen) * 0.5 + 0.01
    online = (torch.randn(E, b, k, device="cuda", generator=gen) * 2).to(dtype)
    return logits, reward, mask, entropy, online


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
    print(f"device: {device}; measured copy bandwidth {copy_bw:.0f} GB/s; E = {E}")
    print(f"{'dtype':>9} {'B':>6} {'K':>4} | {'target us':>9} {'GB/s':>6} {'%copy':>5} | "
          f"{'loss us':>8} {'GB/s':>6} {'%copy':>5} | {'ref eager us':>12} | parity max err")
    for dtype in (torch.float32, torch.bfloat16):
        elem = torch.finfo(dtype).bits // 8
        for k in atoms:
            for b in batches:
                ok, errors = check_parity(b, k, dtype)
                result["parity_ok"] &= ok
                logits, reward, mask, entropy, online = make_inputs(b, k, dtype, seed=1)
                target, _ = categorical_td_target(logits, reward, mask, 0.99, entropy)
                t_target = graph_time_us(lambda: categorical_td_target(
                    logits, reward, mask, 0.99, entropy, check_finite=False))
                online.requires_grad_()
                t_loss = graph_time_us(lambda: torch.ops.mtrl.categorical_cross_entropy(
                    online.detach(), target, None, True, False))
                ref_online = online.detach().float().requires_grad_()

                def reference():
                    y, _ = categorical_td_target_reference(logits, reward, mask, 0.99, entropy,
                                                           v_min=-10, v_max=10)
                    categorical_cross_entropy_reference(ref_online, y).backward()

                t_ref = eager_time_us(reference)
                # Minimum traffic: logits in; target and value out (target op). Logits and
                # target in; gradient, td_error out (loss op).
                bytes_target = E * b * k * elem + 3 * b * 4 + b * k * 4 + b * 4
                bytes_loss = 2 * E * b * k * elem + b * k * 4 + b * 4
                bw_t = bytes_target / (t_target * 1e-6) / 1e9
                bw_l = bytes_loss / (t_loss * 1e-6) / 1e9
                name = str(dtype).replace("torch.", "")
                print(f"{name:>9} {b:>6} {k:>4} | {t_target:9.1f} {bw_t:6.0f} "
                      f"{100 * bw_t / copy_bw:5.0f} | {t_loss:8.1f} {bw_l:6.0f} "
                      f"{100 * bw_l / copy_bw:5.0f} | {t_ref:12.1f} | "
                      f"{'ok' if ok else 'FAIL'} {max(errors.values()):.1e}")
                key = f"{name}_{b}_{k}"
                result[f"target_us_{key}"] = round(t_target, 2)
                result[f"loss_us_{key}"] = round(t_loss, 2)
                result[f"target_pct_copy_bw_{key}"] = round(100 * bw_t / copy_bw, 1)
                result[f"loss_pct_copy_bw_{key}"] = round(100 * bw_l / copy_bw, 1)
                result[f"ref_eager_fwdbwd_us_{key}"] = round(t_ref, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
