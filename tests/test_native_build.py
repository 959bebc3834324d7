"""Where a C compiler is found, every C kernel builds, with -march=native and without.

``native.build`` returns None when a build fails, and its callers then take their tensor-op
paths: right for a user whose machine has no compiler, but a compile error in a kernel
would otherwise pass the suite with the compiled paths' tests skipped (they skip where
``library()`` is None). Here a failed build fails, with the compiler's message."""

import os
import subprocess

import pytest

from fractal_flood import native
from fractal_flood.manager import cpu_step
from fractal_flood.models import renderer_kernels, rowwise_linear, w8a8_linear

COMPILER = native.find_compiler()
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler: the tensor-op paths are the product here")

LIBRARIES = {  # each library's sources, as its module builds it
    "cpu_step": [cpu_step.SOURCE, cpu_step.DRAW_SOURCE, cpu_step.LINEAR_SOURCE, cpu_step.W8A8_SOURCE],
    "renderer_kernels": [renderer_kernels.SOURCE, rowwise_linear.SOURCE],
    "rowwise_linear": [rowwise_linear.SOURCE],
    "w8a8_linear": [w8a8_linear.SOURCE],
}


def test_every_kernel_library_loads():
    for module in (cpu_step, renderer_kernels, rowwise_linear, w8a8_linear):
        assert module.library() is not None, module.__name__


def _native_flag_works() -> bool:
    done = subprocess.run([COMPILER, "-march=native", "-x", "c", "-E", "-"], input="", capture_output=True,
                          text=True)
    return done.returncode == 0


@pytest.mark.parametrize("name", sorted(LIBRARIES))
@pytest.mark.parametrize("march", [True, False], ids=["native", "portable"])
def test_the_sources_compile_without_warnings(tmp_path, name, march):
    if march and not _native_flag_works():
        pytest.skip("this compiler has no -march=native")
    # -Wno-psabi: the portable build's note that 64-byte vectors pass differently without
    # AVX-512 (the functions that take them are static inline: no call crosses a library)
    flags = (("-march=native",) if march else ()) + native.FLAGS + ("-Wall", "-Werror", "-Wno-psabi")
    done = subprocess.run([COMPILER, *flags, "-o", str(tmp_path / f"{name}.so"), *map(str, LIBRARIES[name]), "-lm"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.path.getsize(tmp_path / f"{name}.so") > 0
