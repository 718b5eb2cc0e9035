"""The package imports and reports its build."""

import mtrl


def test_core_imports():
    assert mtrl._core.__name__ == "mtrl._core"


def test_cuda_report_is_consistent():
    built = mtrl.cuda_built()
    assert isinstance(built, bool)
    # A device can only be usable when the kernels were built.
    assert mtrl.cuda_available() <= built
    assert mtrl._core.cuda_device_count() >= 0
