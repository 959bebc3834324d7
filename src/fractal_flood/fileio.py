"""Everything that touches the disk safely, in one place and without torch.

JSON with limits, both ways: files we read (tokenizers, part configs, training state) may
come from anywhere, so they are size-capped, depth-capped before parsing (a deeply nested
file cannot exhaust the parser's recursion) and may not hold NaN or Infinity; what we write
is strict JSON (a non-finite float becomes ``null``, never a bare ``NaN``).

Atomic writes: a temporary file in the same folder, fsync, the mode a plain ``open`` would
give, then a rename, so a killed run never leaves a half-written file; the temporary file
a killed writer leaves is removed by the next write to its folder.

One writer per folder: ``train.lock``, created with O_EXCL, holds the writer's pid, host
and start time and is removed when it finishes. A second writer is refused with one line
naming the holder; a lock left by a process that died on this host is taken over (with a
message), since nobody else can remove it.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import math
import os
import re
import socket
from pathlib import Path
from typing import Callable

from .errors import FractalFloodError

# ---------------------------------------------------------------- JSON with limits

MAX_DEPTH = 32
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def nesting_depth(raw: str) -> int:
    """Deepest bracket nesting outside strings (the text need not be valid JSON)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', raw)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def read_json(path: Path, what: str, max_bytes: int, error=FractalFloodError,
              max_depth: int = MAX_DEPTH):
    """Parse the JSON file ``path`` or raise ``error`` with one line naming it as ``what``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{what} {path} is {size:,} bytes, over the {max_bytes:,}-byte limit")
        raw = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise error(f"{what} {path} nests {depth} levels deep, over the limit of {max_depth}")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise error(f"{what} {path} is truncated or corrupt: {e}") from None


def finite_or_null(obj):
    """A copy of ``obj`` with every NaN or infinite float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """Strict JSON text: non-finite floats as null."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kwargs)


# ---------------------------------------------------------------- atomic writes

_TEMP = re.compile(r"^\..+\.tmp(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_temps(folder: Path) -> list:
    """Delete ``.<name>.tmp<pid>`` files whose writer is dead (``kill -9`` leaves them)."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            try:
                os.unlink(Path(folder) / name)
                removed.append(name)
            except OSError:
                pass
    return removed


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class WriteError(FractalFloodError, OSError):
    """A file we could not write (a full disk, a read-only or vanished folder): one line
    naming the file the user asked for, never the temporary name it was written under."""

    def __init__(self, path, cause: OSError):
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"cannot write {path}: {reason}")
        self.path, self.cause = Path(path), cause

    def __str__(self) -> str:
        return self.strerror


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _as_os_error(e: BaseException):
    """``e`` as an OSError: itself, or the one a library reports in its message (safetensors
    says "I/O error: No space left on device (os error 28)"); None for anything else."""
    if isinstance(e, OSError):
        return e
    m = _OS_ERROR.search(str(e)) if isinstance(e, Exception) else None
    return OSError(int(m.group(1)), os.strerror(int(m.group(1)))) if m else None


def temp_name(path: Path) -> Path:
    """The temporary name :func:`atomic_write` writes ``path`` under."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary name in the same folder, fsync, set the mode
    a plain ``open`` would give (0644 under the usual umask), then rename over ``path``.
    Any failure leaves ``path`` as it was and no temporary file; an OSError (or a library's
    error that carries one) is raised as :class:`WriteError`, naming ``path``."""
    path = Path(path)
    remove_stale_temps(path.parent)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except WriteError:
        raise
    except Exception as e:
        err = _as_os_error(e)
        if err is None:
            raise  # a bug, not the disk: keep its traceback
        raise WriteError(path, err) from e
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # a folder that vanished or went read-only: nothing was left there either


def check_writable(path: Path) -> None:
    """Fail now, with :class:`WriteError` naming ``path``, if :func:`atomic_write` could not
    write it later: create and remove its temporary file (a long run checks its outputs
    first)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise WriteError(path, e) from None


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------- a path that is not there


def why_missing(path, what: str = "file") -> str:
    """Why ``path`` cannot be opened, in a few words naming it: a symlink loop, a broken
    symlink, or not found."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path} is a symlink loop (too many levels of symbolic links)"
        if path.is_symlink():
            try:
                return f"{path} is a broken symlink to {os.readlink(path)}"
            except OSError:
                pass
        if e.errno == errno.ENOENT:
            return f"{what} not found: {path}"
        return f"cannot open {path}: {e.strerror or e}"
    return f"{what} not found: {path}"


# ---------------------------------------------------------------- a file's hash


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 as hex, read in 1 MiB blocks (a corpus may be larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- one writer per folder

LOCK_FILE = "train.lock"


def _holder(path: Path):
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _describe(info) -> str:
    if not info:
        return "an unknown process (the lock file is unreadable)"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"


class DirectoryLock:
    """``with DirectoryLock(folder, log):`` holds the folder's lock for the block."""

    def __init__(self, folder: Path, log: Callable[[str], None] = print):
        self.path = Path(folder) / LOCK_FILE
        self.log = log
        self.info = None

    def __enter__(self) -> "DirectoryLock":
        host = socket.gethostname()
        info = {"pid": os.getpid(), "host": host,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = _holder(self.path)
                pid = held.get("pid") if held else None
                if (attempt == 0 and held and held.get("host") == host and type(pid) is int
                        and pid != os.getpid() and not pid_alive(pid)):
                    self.log(f"taking over {self.path}: its writer, pid {pid}, is no longer running")
                    self.path.unlink(missing_ok=True)
                    continue
                raise FractalFloodError(f"{self.path.parent} is being written by {_describe(held)}; "
                                        f"wait for it, or delete {self.path} if that run is gone") from None
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(json.dumps(info) + "\n")
            except OSError as e:  # a full disk: no half-written lock is left behind
                self.path.unlink(missing_ok=True)
                raise WriteError(self.path, e) from None
            self.info = info
            return self
        raise FractalFloodError(f"cannot take the lock {self.path}")  # a racing writer took it

    def __exit__(self, *exc) -> None:
        if self.info is not None and _holder(self.path) == self.info:
            self.path.unlink(missing_ok=True)
        self.info = None
