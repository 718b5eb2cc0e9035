"""mtrl.precision: the scoped CUDA float32 matmul precision (AgentConfig.tf32)."""

import contextlib
import warnings

import pytest
import torch

from mtrl.precision import cuda_matmul_precision

MATMUL = torch.backends.cuda.matmul


@pytest.fixture(autouse=True)
def pristine_precision():
    """Every test starts from torch's defaults and leaves them behind (the flags are global)."""
    def reset():
        MATMUL.fp32_precision = "none"
        torch.backends.mkldnn.matmul.fp32_precision = "none"
        torch.backends.fp32_precision = "none"
    reset()
    yield
    reset()


@contextlib.contextmanager
def legacy_api():
    """Where a test plays a caller of the legacy API (allow_tf32, set/get_float32_matmul_precision):
    torch 2.9-2.11 warn once that it will be deprecated (a UserWarning, an error under this
    suite's filterwarnings); 2.13 does not."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Please use the new API settings",
                                category=UserWarning)
        yield


def test_sets_tf32_inside_and_restores_the_default_after():
    assert MATMUL.fp32_precision == "none"
    with cuda_matmul_precision(True):
        assert MATMUL.fp32_precision == "tf32"
    assert MATMUL.fp32_precision == "none"
    with legacy_api():  # the legacy getters agree again (torch 2.13: no mixed-API RuntimeError)
        assert MATMUL.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    with cuda_matmul_precision(False):  # already IEEE: nothing to change
        assert MATMUL.fp32_precision == "none"


def test_restores_on_exception():
    with pytest.raises(KeyError, match="boom"):
        with cuda_matmul_precision(True):
            assert MATMUL.fp32_precision == "tf32"
            raise KeyError("boom")
    assert MATMUL.fp32_precision == "none"
    MATMUL.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="bang"):
        with cuda_matmul_precision(False):
            assert MATMUL.fp32_precision == "ieee"
            raise RuntimeError("bang")
    assert MATMUL.fp32_precision == "tf32"


def test_caller_with_tf32_on_new_api():
    MATMUL.fp32_precision = "tf32"
    with cuda_matmul_precision(False):
        assert MATMUL.fp32_precision == "ieee"
        with cuda_matmul_precision(True):  # nested: back to the caller's value, then restored
            assert MATMUL.fp32_precision == "tf32"
        assert MATMUL.fp32_precision == "ieee"
    assert MATMUL.fp32_precision == "tf32"
    with cuda_matmul_precision(True):
        assert MATMUL.fp32_precision == "tf32"
    assert MATMUL.fp32_precision == "tf32"


@pytest.mark.parametrize("legacy", ["allow_tf32", "set_float32_matmul_precision"])
def test_caller_with_tf32_on_legacy_api(legacy):
    with legacy_api():
        if legacy == "allow_tf32":
            MATMUL.allow_tf32 = True
        else:
            torch.set_float32_matmul_precision("high")
    with cuda_matmul_precision(False):
        assert MATMUL.fp32_precision == "ieee"
    # Restored through the new API, the caller's legacy view is consistent and unchanged.
    assert MATMUL.fp32_precision == "tf32"
    with legacy_api():
        assert MATMUL.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"


def test_caller_with_legacy_ieee_and_tf32_inside():
    with legacy_api():
        MATMUL.allow_tf32 = False  # legacy "off": the new getter reads ieee, not none
    with cuda_matmul_precision(True):
        assert MATMUL.fp32_precision == "tf32"
    assert MATMUL.fp32_precision == "ieee"
    with legacy_api():
        assert MATMUL.allow_tf32 is False


def test_inherited_setting_keeps_following_its_parent():
    torch.backends.fp32_precision = "tf32"  # the generic parent; cuda.matmul unset inherits it
    assert MATMUL.fp32_precision == "tf32"
    with cuda_matmul_precision(False):
        assert MATMUL.fp32_precision == "ieee"
    torch.backends.fp32_precision = "ieee"
    assert MATMUL.fp32_precision == "ieee"  # restored as unset, not pinned to tf32


def test_cpu_matmul_flags_untouched():
    before = torch.backends.mkldnn.matmul.fp32_precision
    with cuda_matmul_precision(True):
        assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def _tf32_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not _tf32_gpu(), reason="needs a CUDA GPU with TF32 (Ampere or later)")
def test_cuda_matmul_runs_in_the_requested_precision():
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(512, 512, device="cuda", generator=g)
    b = torch.randn(512, 512, device="cuda", generator=g)
    exact = (a.double() @ b.double())
    scale = exact.abs().max().item()
    with cuda_matmul_precision(False):
        ieee = ((a @ b).double() - exact).abs().max().item() / scale
    with cuda_matmul_precision(True):
        tf32 = ((a @ b).double() - exact).abs().max().item() / scale
    # float32 products: ~1e-7 relative; TF32 rounds the inputs to 10 mantissa bits: ~1e-3.
    assert ieee < 1e-5 < tf32 < 1e-2, (ieee, tf32)
