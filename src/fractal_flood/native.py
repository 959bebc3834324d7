"""C kernels compiled on first use with the machine's C compiler, loaded with ctypes.

A kernel is one or more C files in the package. The first call builds a shared library
into a cache folder (``FRACTAL_FLOOD_CACHE``, else ``$XDG_CACHE_HOME/fractal_flood`` or
``~/.cache/fractal_flood``, else the temporary folder), named by a hash of the sources, the
compiler, the flags and the CPU's features (``-march=native`` compiles for this CPU), so
later runs load it at once and an edited source or another CPU builds anew. The build is
written to a temporary file and renamed, so concurrent first uses each see a whole library.

Flags: ``-O3 -ffp-contract=off`` and no ``-ffast-math``: every float operation is rounded
as written (no multiply and add fused by the compiler, no reordering; a kernel that wants a
fused multiply-add writes ``fmaf``, correctly rounded on every CPU), so a kernel's result is
a fixed function of its inputs, the same for every vector width the compiler picks.

Without a C compiler (``CC`` or ``cc``), or when a build fails, ``build`` returns None and
callers take their tensor-op path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence

FLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-std=gnu11", "-shared", "-fPIC")

_lock = threading.Lock()
_built: dict = {}


def cache_dirs() -> list:
    root = os.environ.get("FRACTAL_FLOOD_CACHE")
    if root:
        return [Path(root)]
    xdg = os.environ.get("XDG_CACHE_HOME")
    return [Path(xdg or Path.home() / ".cache") / "fractal_flood",
            Path(tempfile.gettempdir()) / f"fractal_flood-{os.getuid()}"]


def cpu_features() -> str:
    """The CPU's feature flags (what ``-march=native`` compiles for): part of the cache key."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return os.uname().machine


def _compile(compiler: str, target: Path, flags: tuple, sources: Sequence[Path]) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", tmp, *map(str, sources), "-lm"],
                              capture_output=True, timeout=300)
        if done.returncode != 0:
            return False
        os.replace(tmp, target)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_compiler() -> Optional[str]:
    """The C compiler builds use: ``CC``, else ``cc``, else ``gcc``; None where there is none."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build(name: str, sources: Sequence[Path], headers: Sequence[Path] = ()) -> Optional[ctypes.CDLL]:
    """The library of ``sources`` (``headers``: files they include, part of the key), built
    on first use; None where it cannot be built. One build per name and process."""
    with _lock:
        if name in _built:
            return _built[name]
        lib = None
        compiler = find_compiler()
        if compiler is not None:
            text = b"".join(Path(p).read_bytes() for p in (*sources, *headers))
            for flags in (("-march=native", *FLAGS), FLAGS):  # some compilers lack -march=native
                key = hashlib.sha256(text + repr((compiler, flags)).encode()
                                     + cpu_features().encode()).hexdigest()[:16]
                for folder in cache_dirs():
                    target = folder / f"{name}-{key}.so"
                    try:
                        if target.exists() or _compile(compiler, target, flags, sources):
                            lib = ctypes.CDLL(str(target))
                            break
                    except OSError:
                        continue
                if lib is not None:
                    break
        _built[name] = lib
        return lib
