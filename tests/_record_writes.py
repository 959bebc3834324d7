"""Run ``fractal-flood`` (argv after the record directory) and note every file this process
opens for writing or renames into place, as ``<record dir>/rank<RANK>.json``. Launched by
test_distributed under torchrun, to see which ranks write. Every write of the project is
atomic (a temporary file, then ``os.replace``), so the renames name them all; the opens
catch any that are not."""

import builtins
import io
import json
import os
import sys
from pathlib import Path

record_dir, argv = Path(sys.argv[1]), sys.argv[2:]
written: list[str] = []
_open, _io_open, _replace = builtins.open, io.open, os.replace


def _noting(real):
    def opener(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            written.append(os.path.abspath(file))
        return real(file, mode, *args, **kwargs)
    return opener


def _replace_noting(src, dst, *args, **kwargs):
    written.append(os.path.abspath(dst))
    return _replace(src, dst, *args, **kwargs)


builtins.open, io.open, os.replace = _noting(_open), _noting(_io_open), _replace_noting

from fractal_flood.cli.main import main  # noqa: E402  (after the patches, so every import sees them)

try:
    status = main(argv)
finally:
    builtins.open, io.open, os.replace = _open, _io_open, _replace
    rank = os.environ.get("RANK", "none")
    (record_dir / f"rank{rank}.json").write_text(json.dumps(written), encoding="utf-8")
sys.exit(status)
