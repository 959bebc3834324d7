"""Everything ``train --resume`` needs to continue a part where it stopped: the weights in
float32, the optimizer, the step, the schedule's length, the random generator and the best
held-out loss so far. One file per part under ``<model dir>/train_state/``."""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import FractalFloodError

STATE_DIR = "train_state"


def state_path(out_dir, part: str) -> Path:
    return Path(out_dir) / STATE_DIR / f"{part}.pt"


def save_state(out_dir, part, model, opt, gen, step, total, preset, best) -> None:
    """Everything ``--resume`` needs, written atomically."""
    state_dir = Path(out_dir) / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
             "total_steps": total, "rng": gen.get_state(), "preset": preset, "best": best}
    ckpt.atomic_write(state_dir / f"{part}.pt", lambda p: torch.save(state, p))


def restore_state(path: Path, model, opt, gen, part):
    """-> (step, total steps, best) and the model, optimizer and generator set as saved."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        gen.set_state(state["rng"])
        return int(state["step"]), int(state["total_steps"]), state.get("best", float("inf"))
    except Exception as e:
        raise FractalFloodError(f"cannot resume {part} from {path}: {type(e).__name__}: {e}") from None
