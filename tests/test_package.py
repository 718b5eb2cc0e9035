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


def _spin_count_in_fresh_process(env_value: str | None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if env_value is not None:
        env["GOMP_SPINCOUNT"] = env_value
    code = "import os, mtrl; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip().splitlines()[-1]


def test_import_sets_openmp_spin_count_unless_the_user_did():
    assert _spin_count_in_fresh_process(None) == "10000"
    assert _spin_count_in_fresh_process("250") == "250"
