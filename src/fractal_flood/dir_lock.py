"""One writer per model directory: ``train.lock``, created with O_EXCL, holds the writer's
pid, host and start time and is removed when it finishes. A second writer is refused with
one line naming the holder; a lock left by a process that died on this host is taken over
(with a message), since nobody else can remove it."""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Callable

from .errors import FractalFloodError
from .models.checkpoint import pid_alive

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
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(info) + "\n")
            self.info = info
            return self
        raise FractalFloodError(f"cannot take the lock {self.path}")  # a racing writer took it

    def __exit__(self, *exc) -> None:
        if self.info is not None and _holder(self.path) == self.info:
            self.path.unlink(missing_ok=True)
        self.info = None
