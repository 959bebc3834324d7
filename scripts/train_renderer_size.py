"""`fractal-flood train` with the `small` preset's renderer resized: the renderer size sweep
of docs/log/notebook.md. Everything else (schedule, batch, corpus, logging) is the preset's.

Usage: python scripts/train_renderer_size.py LAYERS WIDTH HEADS train --out DIR --preset small ...
(the arguments after HEADS are `fractal-flood`'s own). Run it single-threaded
(OMP_NUM_THREADS=1) under `time` to read the CPU seconds a training costs.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from fractal_flood.cli.main import main
from fractal_flood.models import config

if __name__ == "__main__":
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    layers, width, heads = map(int, sys.argv[1:4])
    config.PRESETS["small"] = replace(config.PRESETS["small"],
                                      renderer=dict(n_layers=layers, d_model=width, n_heads=heads))
    sys.exit(main(sys.argv[4:]))
