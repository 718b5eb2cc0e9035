"""The CUDA TD target and cross-entropy kernels' logic, checked on the CPU (no GPU needed).

tests/cuda_emulation builds csrc/kernels/td_target_cuda_kernels.cuh as host C++ with stand-ins for
the CUDA features it uses (simt.h: one std::thread per GPU thread, a barrier per warp for the
shuffles and votes, one per block for __syncthreads) and launches the kernels as TdTargetCuda and
CrossEntropyCuda would. The results are held against the float64 references: the target on every
row layout and projection path, the loss, per-sample TD errors and gradient on every kernel. The
floats differ from a GPU's in the last bits (exp2f and std::exp for ex2.approx and __expf; nvcc
contracts into FMAs where the host build does not);
tests/test_td_target_cuda.py checks the real kernels where a GPU is present.
"""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import pytest
import torch

from mtrl.ops import categorical_cross_entropy_reference, categorical_td_target_reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMULATION = ROOT / "tests" / "cuda_emulation"


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    library = tmp_path_factory.mktemp("cuda_emulation") / "emulate_td_target.so"
    subprocess.run([compiler, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC",
                    f"-I{EMULATION / 'include'}", f"-I{ROOT / 'csrc'}",
                    str(EMULATION / "emulate_td_target.cc"), "-o", str(library)],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def emulated_kernel(emulation):
    fn = emulation.emulate_td_target
    p = ctypes.c_void_p
    fn.restype = ctypes.c_int
    fn.argtypes = [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, p, p, p,
                   ctypes.c_float, p, p, p, p, ctypes.c_float, ctypes.c_float, ctypes.c_int,
                   ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_int]
    return fn


@pytest.fixture(scope="module")
def emulated_loss(emulation):
    fn = emulation.emulate_cross_entropy
    p = ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, p, p, p, p, p,
                   p]
    return fn


def ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def run(fn, logits, reward, mask, discount, entropy, *, lanes=0, multiprocessors=1,
        combine="mean", projection="c51", sigma=0.0):
    """(target, expected value, non-finite row count, lanes per row used) of one emulated launch."""
    members, batch, atoms = logits.shape
    target = torch.full((batch, atoms), -7.0)
    value = torch.full((batch,), -7.0)
    count = torch.zeros(1, dtype=torch.int32)
    used = fn(ptr(logits), int(logits.dtype == torch.bfloat16), members, batch, atoms, ptr(reward),
              ptr(mask), ptr(discount), 0.0, ptr(entropy), ptr(target), ptr(value), ptr(count),
              -10.0, 10.0, {"mean": 0, "min": 1}[combine], {"c51": 0, "hl_gauss": 1}[projection],
              sigma, lanes, multiprocessors)
    return target, value, int(count), used


def make_inputs(e, b, k, seed, dtype=torch.float32):
    """Rewards inside and far outside [-10, 10]; per-sample discounts that put rows on the shift
    (0.99, 1), scan (0.9, 0.5, and 1.7, whose atoms skip bins), terminal (0, or mask 0) and serial
    (-0.5) projections."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(e, b, k, generator=gen) * 3 + 0.1).to(dtype)
    reward = torch.randn(b, generator=gen) * 15 + 0.05
    mask = (torch.rand(b, generator=gen) > 0.3).float()
    entropy = torch.randn(b, generator=gen) * 0.5 + 0.01
    choices = torch.tensor([0.99, 1.0, 0.9, 0.5, 1.7, 0.0, -0.5])
    discount = choices[torch.randint(0, len(choices), (b,), generator=gen)]
    return logits, reward, mask, discount, entropy


def assert_matches_reference(target, value, logits, reward, mask, discount, entropy, **kw):
    as64 = [t.double() for t in (logits.float(), reward, mask, discount, entropy)]
    ref_t, ref_v = categorical_td_target_reference(*as64, v_min=-10.0, v_max=10.0, **kw)
    torch.testing.assert_close(target.double(), ref_t, atol=3e-5, rtol=0)
    torch.testing.assert_close(value.double(), ref_v, atol=1e-4, rtol=1e-5)
    # Serial-scatter rows (g < 0) add K float32 terms one by one: 2e-6 at K = 201.
    row_tol = torch.where(discount < 0, 2e-6, 1e-6).double()
    assert ((target.double().sum(-1) - 1).abs() <= row_tol).all()


# The longest row each forced layout takes (longer ones leave the choice to the launcher).
LAYOUT_MAX_ATOMS = {1: 128, 2: 128, 8: 128, 16: 256, 32: 4096}


@pytest.mark.parametrize("k", [11, 32, 64, 101, 128, 201, 256])
@pytest.mark.parametrize("lanes", [1, 2, 8, 16, 32])
def test_every_row_layout_on_every_path(emulated_kernel, k, lanes):
    """B = 70: a partial last block, whose past-the-batch groups (threads, for a thread or two per
    row) must not write. K = 32, 64, 128 and 256 fill the lanes' slots exactly (C_K then has no owner
    and is written apart). A forced layout too small for the row leaves the choice to the launcher
    (16 lanes for K > 128 here)."""
    inputs = make_inputs(2, 70, k, seed=k + lanes)
    target, value, bad, used = run(emulated_kernel, *inputs, lanes=lanes)
    assert used == (lanes if k <= LAYOUT_MAX_ATOMS[lanes] else 16) and bad == 0
    assert_matches_reference(target, value, *inputs)


@pytest.mark.parametrize("k", [2, 3, 5, 31, 33])
@pytest.mark.parametrize("lanes", [1, 2])
def test_thread_per_row_slabs_of_short_rows(emulated_kernel, k, lanes):
    """A thread (or two) per row copies its block's rows as one slab, each thread stepping over
    several rows per step when K < 32 (and across a row end at other K); one member, three (two
    threads: an odd count) and B = 1."""
    for members, batch in ((1, 45), (3, 33), (2, 1)):
        inputs = make_inputs(members, batch, k, seed=k + members)
        for combine in ("mean", "min"):
            target, value, bad, used = run(emulated_kernel, *inputs, lanes=lanes, combine=combine)
            assert used == lanes and bad == 0
            assert_matches_reference(target, value, *inputs, combine=combine)


@pytest.mark.parametrize("lanes", [1, 2, 8, 32])
@pytest.mark.parametrize("combine,projection,sigma", [("min", "c51", 0.0),
                                                      ("mean", "hl_gauss", 0.15),
                                                      ("min", "hl_gauss", 0.15)])
def test_min_combine_and_hl_gauss(emulated_kernel, lanes, combine, projection, sigma):
    inputs = make_inputs(5, 40, 101, seed=7)
    target, value, _, _ = run(emulated_kernel, *inputs, lanes=lanes, combine=combine,
                              projection=projection, sigma=sigma)
    assert_matches_reference(target, value, *inputs, combine=combine, projection=projection,
                             sigma=sigma)


def test_bfloat16_logits(emulated_kernel):
    inputs = make_inputs(2, 40, 101, seed=9, dtype=torch.bfloat16)
    for lanes in (1, 2, 8, 32):
        target, value, _, _ = run(emulated_kernel, *inputs, lanes=lanes)
        assert_matches_reference(target, value, *inputs)


def test_nonfinite_rows_are_nan_and_counted(emulated_kernel):
    logits, reward, mask, discount, entropy = make_inputs(2, 40, 101, seed=11)
    logits[1, 3, 50] = float("nan")
    reward[17] = float("inf")
    for lanes in (1, 2, 8, 32):
        target, value, bad, _ = run(emulated_kernel, logits, reward, mask, discount, entropy,
                                    lanes=lanes)
        assert bad == 2
        rows = torch.tensor([3, 17])
        assert torch.isnan(target[rows]).all() and torch.isnan(value[rows]).all()
        keep = torch.ones(40, dtype=torch.bool)
        keep[rows] = False
        assert torch.isfinite(target[keep]).all() and torch.isfinite(value[keep]).all()


def test_layout_choice_follows_the_batch(emulated_kernel):
    """A warp per row up to 24 rows per multiprocessor, 8 lanes above (K <= 128), 16 (K <= 256)."""
    for k, multiprocessors, expect in ((101, 1, 8), (101, 3, 32), (201, 1, 16), (300, 1, 32)):
        inputs = make_inputs(1, 70, k, seed=k)
        target, value, _, used = run(emulated_kernel, *inputs, multiprocessors=multiprocessors)
        assert used == expect
        assert_matches_reference(target, value, *inputs)


def run_loss(fn, logits, target, weight=None, need_grad=True):
    """(loss, td_error, gradient or None, non-finite count) of the emulated cross-entropy."""
    members, batch, atoms = logits.shape
    td_error = torch.full((batch,), -7.0)
    grad = torch.full(logits.shape, -7.0, dtype=logits.dtype) if need_grad else None
    loss = torch.full((1,), -7.0)
    count = torch.full((1,), -7, dtype=torch.int32)
    fn(ptr(logits), int(logits.dtype == torch.bfloat16), members, batch, atoms, ptr(target),
       ptr(weight), ptr(td_error), ptr(grad), ptr(loss), ptr(count))
    return loss[0], td_error, grad, int(count)


@pytest.mark.parametrize("k", [11, 101, 513])  # register kernels (2 and 4 per lane), generic one
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_loss_td_error_and_gradient(emulated_loss, k, weighted):
    gen = torch.Generator().manual_seed(k + weighted)
    logits = torch.randn(2, 70, k, generator=gen) * 2
    target = torch.softmax(torch.randn(70, k, generator=gen) * 2, -1)
    weight = torch.rand(70, generator=gen) + 0.1 if weighted else None
    loss, td_error, grad, bad = run_loss(emulated_loss, logits, target, weight)
    online = logits.double().requires_grad_()
    ref_loss, ref_td = categorical_cross_entropy_reference(
        online, target.double(), None if weight is None else weight.double(), return_td_error=True)
    ref_loss.backward()
    assert bad == 0
    torch.testing.assert_close(loss.double(), ref_loss.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(td_error.double(), ref_td, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad.double(), online.grad, atol=1e-8, rtol=1e-4)


def test_cross_entropy_bfloat16_logits_and_no_gradient(emulated_loss):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 40, 101, generator=gen) * 2).to(torch.bfloat16)
    target = torch.softmax(torch.randn(40, 101, generator=gen), -1)
    online = logits.double().requires_grad_()
    ref_loss, ref_td = categorical_cross_entropy_reference(online, target.double(),
                                                           return_td_error=True)
    ref_loss.backward()
    loss, td_error, grad, _ = run_loss(emulated_loss, logits, target)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.double(), online.grad, atol=1e-6, rtol=1e-2)
    torch.testing.assert_close(td_error.double(), ref_td, atol=1e-4, rtol=1e-5)
    loss_only, td_only, none, _ = run_loss(emulated_loss, logits, target, need_grad=False)
    assert none is None and loss_only == loss and torch.equal(td_only, td_error)


def test_cross_entropy_counts_nonfinite_samples(emulated_loss):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 40, 101, generator=gen)
    target = torch.softmax(torch.randn(40, 101, generator=gen), -1)
    weight = torch.rand(40, generator=gen) + 0.1
    logits[1, 7, 3] = float("inf")
    weight[20] = float("nan")
    loss, td_error, _, bad = run_loss(emulated_loss, logits, target, weight)
    assert bad == 2 and torch.isnan(td_error[[7, 20]]).all() and not torch.isfinite(loss)


def test_loss_reduction_over_many_samples(emulation):
    """B = 10000: each of the 1024 threads sums several strided samples (4 loads in flight)."""
    fn = emulation.emulate_loss_reduce
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_void_p]
    gen = torch.Generator().manual_seed(6)
    td_error = torch.rand(10000, generator=gen) * 5
    weight = torch.rand(10000, generator=gen)
    loss = torch.zeros(1)
    count = torch.full((1,), -1, dtype=torch.int32)
    fn(ptr(td_error), ptr(weight), 10000, ptr(loss), ptr(count))
    expected = (td_error.double() * weight.double()).sum() / 10000
    assert int(count) == 0
    torch.testing.assert_close(loss[0].double(), expected, atol=0, rtol=1e-6)


def test_no_data_races_between_lanes(tmp_path):
    """The emulation built with ThreadSanitizer runs every kernel on every path
    (emulate_td_target.cc's MTRL_EMULATION_RACE_CHECK program): a lane reading shared memory that
    another lane of its warp or block writes without a __syncwarp / __syncthreads between them is
    reported (a dropped __syncwarp in the scan path was, at the line). Skips where the compiler
    has no working ThreadSanitizer."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    probe = tmp_path / "probe.cc"
    probe.write_text("#include <thread>\nint main() { std::thread([] {}).join(); }\n")
    built = subprocess.run([compiler, "-fsanitize=thread", str(probe), "-o", str(tmp_path / "p")],
                           capture_output=True)
    if built.returncode != 0 or subprocess.run([str(tmp_path / "p")],
                                               capture_output=True).returncode != 0:
        pytest.skip("ThreadSanitizer does not build or run here")
    program = tmp_path / "race_check"
    subprocess.run([compiler, "-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=thread",
                    "-DMTRL_EMULATION_RACE_CHECK", f"-I{EMULATION / 'include'}",
                    f"-I{ROOT / 'csrc'}", str(EMULATION / "emulate_td_target.cc"), "-o",
                    str(program)], check=True, capture_output=True)
    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=600)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[:4000]
    assert run.returncode == 0, run.stderr[-2000:]
