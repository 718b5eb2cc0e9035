"""Same-process A/B of the CPU TD-target and loss kernels: a base commit's against this checkout's.

Compiles ``csrc/kernels``' headers of both versions into one C++ binary (each version in its own
translation unit; everything in the headers has internal linkage), then calls ``TdTargetImpl`` and
``CrossEntropyImpl`` of the two versions alternately on the same inputs (the shapes and
distributions of ``bench_td_target.py``: E = 2, B = 1024, K = 101, gamma = 0.99, 5% terminal
masks, rewards N(0, 3^2)). Every round times ``--inner`` calls of each version, the order swapping
from round to round; one thread is timed in thread CPU time (other processes' time slices left
out), more threads in wall time. Prints the medians and the median of the per-round new / base
ratios (< 1: this checkout is faster) and the largest output differences; the last line is
``RESULT {json}``. Needs g++ and git; the AVX-512 build of the kernels when the CPU has it, else
AVX2.

    python benchmarks/ab_td_kernels.py [--base COMMIT] [--threads N] [--rounds R] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

VERSION_TU = r"""
#include "kernels/td_target_cpu_impl.h"
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
extern "C" int64_t CAT(td_, VER)(const mtrl::TdTargetArgs<float>* a, int t) {
  return mtrl::TdTargetImpl<float>(*a, t);
}
extern "C" int64_t CAT(ce_, VER)(const mtrl::CrossEntropyArgs<float>* a, int t, double* loss) {
  return mtrl::CrossEntropyImpl<float>(*a, t, loss);
}
"""

MAIN_TU = r"""
#include <time.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include "kernels/td_target.h"
using namespace mtrl;
extern "C" int64_t td_base(const TdTargetArgs<float>*, int);
extern "C" int64_t ce_base(const CrossEntropyArgs<float>*, int, double*);
extern "C" int64_t td_head(const TdTargetArgs<float>*, int);
extern "C" int64_t ce_head(const CrossEntropyArgs<float>*, int, double*);
static double Now(bool cpu) {
  timespec ts;
  clock_gettime(cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
static double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
int main(int argc, char** argv) {
  const int threads = atoi(argv[1]), rounds = atoi(argv[2]), inner = atoi(argv[3]);
  const int E = 2, B = 1024, K = 101;
  const bool cpu = threads == 1;
  std::mt19937 rng(0);
  std::normal_distribution<float> n01;
  std::uniform_real_distribution<float> u01;
  std::vector<float> logits(E * B * K), online(E * B * K), reward(B), mask(B), entropy(B);
  for (auto& x : logits) x = 2 * n01(rng);
  for (auto& x : reward) x = 3 * n01(rng);
  for (auto& x : mask) x = u01(rng) > 0.05f ? 1.0f : 0.0f;
  for (auto& x : entropy) x = 0.1f * n01(rng);
  for (auto& x : online) x = n01(rng);
  std::vector<float> target[2], value[2], grad[2], td(B);
  TdTargetArgs<float> ta[2];
  CrossEntropyArgs<float> ca[2];
  for (int v = 0; v < 2; ++v) {
    target[v].resize(B * K), value[v].resize(B), grad[v].resize(E * B * K);
    TdTargetArgs<float>& a = ta[v];
    a.target_logits = logits.data(), a.reward = reward.data(), a.mask = mask.data();
    a.discount_value = 0.99, a.entropy = entropy.data();
    a.num_members = E, a.batch_size = B, a.num_atoms = K;
    a.target = target[v].data(), a.expected_value = value[v].data();
    CrossEntropyArgs<float>& c = ca[v];
    c.online_logits = online.data(), c.target = target[v].data();
    c.num_members = E, c.batch_size = B, c.num_atoms = K;
    c.td_error = td.data(), c.grad = grad[v].data();
  }
  double loss;
  auto run = [&](int v, int kernel) {
    if (kernel == 0) (v ? td_head : td_base)(&ta[v], threads);
    else (v ? ce_head : ce_base)(&ca[v], threads, &loss);
  };
  for (int v = 0; v < 2; ++v) run(v, 0), run(v, 1);
  double d_target = 0, d_value = 0, d_grad = 0;
  for (int i = 0; i < B * K; ++i) d_target = std::max(d_target, (double)std::fabs(target[0][i] - target[1][i]));
  for (int i = 0; i < B; ++i) d_value = std::max(d_value, (double)std::fabs(value[0][i] - value[1][i]));
  for (int i = 0; i < E * B * K; ++i) d_grad = std::max(d_grad, (double)std::fabs(grad[0][i] - grad[1][i]));
  std::vector<double> ms[2][2], ratio[2];
  for (int r = 0; r < rounds; ++r) {
    for (int kernel = 0; kernel < 2; ++kernel) {
      double t[2];
      for (int o = 0; o < 2; ++o) {
        const int v = (r + o) % 2;
        const double t0 = Now(cpu);
        for (int i = 0; i < inner; ++i) run(v, kernel);
        t[v] = (Now(cpu) - t0) / inner * 1e3;
      }
      ms[kernel][0].push_back(t[0]), ms[kernel][1].push_back(t[1]);
      ratio[kernel].push_back(t[1] / t[0]);
    }
  }
  printf("{\"target_base_ms\": %.4f, \"target_head_ms\": %.4f, \"target_ratio\": %.4f, "
         "\"loss_base_ms\": %.4f, \"loss_head_ms\": %.4f, \"loss_ratio\": %.4f, "
         "\"max_diff_target\": %.3g, \"max_diff_value\": %.3g, \"max_diff_grad\": %.3g}\n",
         Median(ms[0][0]), Median(ms[0][1]), Median(ratio[0]), Median(ms[1][0]),
         Median(ms[1][1]), Median(ratio[1]), d_target, d_value, d_grad);
}
"""


def cpu_has_avx512() -> bool:
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512dq", "avx512bw", "avx512vl"))


def build(base: str, work: pathlib.Path) -> pathlib.Path:
    base_root = work / "base"
    (base_root / "kernels").mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", base, "csrc/kernels/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".h"):
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{base}:{name}"], check=True,
                                  capture_output=True, text=True).stdout
            (base_root / "kernels" / pathlib.Path(name).name).write_text(text)
    (work / "version.cc").write_text(VERSION_TU)
    (work / "main.cc").write_text(MAIN_TU)
    isa = (["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mprefer-vector-width=512"]
           if cpu_has_avx512() else [])
    flags = ["-O3", "-std=c++17", "-mavx2", "-mfma", "-fno-trapping-math", *isa]
    head_root = ROOT / "csrc"
    objs = []
    for tag, inc in (("base", base_root), ("head", head_root)):
        obj = work / f"{tag}.o"
        subprocess.run(["g++", *flags, f"-DVER={tag}", f"-I{inc}", "-c", str(work / "version.cc"),
                        "-o", str(obj)], check=True)
        objs.append(str(obj))
    for src, obj in ((work / "main.cc", work / "main.o"),
                     (ROOT / "csrc/kernels/parallel.cc", work / "parallel.o")):
        subprocess.run(["g++", "-O2", "-std=c++17", "-fopenmp", "-DMTRL_WITH_OPENMP=1",
                        f"-I{head_root}", "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = work / "ab"
    subprocess.run(["g++", "-fopenmp", *objs, "-o", str(exe)], check=True)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="83e4d05", help="commit whose csrc/kernels is the base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(args.base, pathlib.Path(tmp))
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "active"))
        results = []
        for _ in range(args.runs):
            out = subprocess.run([str(exe), str(args.threads), str(args.rounds), str(args.inner)],
                                 check=True, capture_output=True, text=True, env=env).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    clock = "thread CPU time" if args.threads == 1 else "wall time"
    print(f"base {args.base} vs this checkout; threads {args.threads} ({clock}); "
          f"{args.rounds} rounds x {args.inner} calls per run; E=2, B=1024, K=101")
    print(" kernel | base ms | head ms | head/base per run")
    for kernel in ("target", "loss"):
        runs = " / ".join(f"{r[kernel + '_ratio']:.3f}" for r in results)
        base_ms = sorted(r[kernel + "_base_ms"] for r in results)[len(results) // 2]
        head_ms = sorted(r[kernel + "_head_ms"] for r in results)[len(results) // 2]
        print(f" {kernel:6s} | {base_ms:7.4f} | {head_ms:7.4f} | {runs}")
    last = results[-1]
    print(f"max |head - base|: target {last['max_diff_target']:.3g}, expected value "
          f"{last['max_diff_value']:.3g}, gradient {last['max_diff_grad']:.3g}")
    summary = {"base": args.base, "threads": args.threads,
               "target_ratio": sorted(r["target_ratio"] for r in results)[len(results) // 2],
               "loss_ratio": sorted(r["loss_ratio"] for r in results)[len(results) // 2],
               "runs": results}
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
