"""Everything ``train --resume`` needs to continue a part where it stopped, without pickle:
``train_state/<part>.safetensors`` holds the tensors (weights in float32, the optimizer's
moments, the random generator's state) and ``train_state/<part>.json`` the rest (step,
schedule length, optimizer settings, best held-out loss, the tokenizer's sha256). Both
carry one random stamp, so a pair from two different saves is refused. Restoring checks
names, shapes, dtypes and finiteness before anything is copied into the model; every
failure is one :class:`CheckpointError` line.
"""

from __future__ import annotations

import math
import secrets
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fileio import atomic_write, dumps, read_json, write_text

STATE_DIR = "train_state"
FORMAT = "fractal-flood-train-state"
VERSION = 1
MAX_JSON_BYTES = 4 << 20


def state_paths(out_dir, part: str) -> tuple[Path, Path]:
    """-> (tensors, JSON) of a part's saved state."""
    d = Path(out_dir) / STATE_DIR
    return d / f"{part}.safetensors", d / f"{part}.json"


def legacy_path(out_dir, part: str) -> Path:
    """Where releases before this one pickled the state (never read, only recognised)."""
    return Path(out_dir) / STATE_DIR / f"{part}.pt"


def has_state(out_dir, part: str) -> bool:
    return any(p.exists() for p in (*state_paths(out_dir, part), legacy_path(out_dir, part)))


def save_state(out_dir, part, model, opt, gen, step, total, preset, best, tokenizer_sha256=None) -> None:
    """Tensors first, then the JSON that names them: a save cut short leaves the previous
    pair, or a pair whose stamps differ (refused on resume), never a silent mix."""
    tensors_path, json_path = state_paths(out_dir, part)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    # clone: tied weights share storage, which safetensors refuses to write twice
    tensors = {f"model/{k}": v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    scalars = {}
    for idx, st in osd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{idx}/{name}"] = v.detach().to("cpu").clone().contiguous()
            else:
                scalars[f"{idx}/{name}"] = v
    tensors["rng"] = gen.get_state().clone()
    stamp = secrets.token_hex(8)
    atomic_write(tensors_path, lambda p: save_file(tensors, str(p), metadata={"stamp": stamp}))
    meta = {"format": FORMAT, "version": VERSION, "part": part, "stamp": stamp, "step": int(step),
            "total_steps": int(total), "preset": preset,
            "best": best if isinstance(best, float) and math.isfinite(best) else None,
            "param_groups": osd["param_groups"], "optim_scalars": scalars,
            "tokenizer_sha256": tokenizer_sha256}
    write_text(json_path, dumps(meta, indent=1) + "\n")


def restore_state(out_dir, part, model, opt, gen, tokenizer_sha256=None):
    """Set model, optimizer and generator as saved. -> (step, total steps, best or None)."""
    tensors_path, json_path = state_paths(out_dir, part)
    legacy = legacy_path(out_dir, part)
    if not json_path.exists() and legacy.exists():
        raise CheckpointError(f"cannot resume {part}: {legacy} is a pickled training state from an older "
                              "release and is never loaded (pickle can run code); train afresh with "
                              "--overwrite")
    where = f"cannot resume {part} from {json_path.parent}"
    meta = read_json(json_path, f"{part} training state", MAX_JSON_BYTES, CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("part") != part:
        raise CheckpointError(f"{where}: {json_path.name} is not a {part} training state")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{where}: version {meta.get('version')!r}, this release reads {VERSION}")
    step, total = meta.get("step"), meta.get("total_steps")
    if type(step) is not int or type(total) is not int or not 0 <= step <= total or total < 1:
        raise CheckpointError(f"{where}: step {step!r} of {total!r} is not 0 <= step <= total")
    saved_tok = meta.get("tokenizer_sha256")
    if saved_tok is not None and tokenizer_sha256 is not None and saved_tok != tokenizer_sha256:
        raise CheckpointError(f"{where}: it was trained with the tokenizer of sha256 {str(saved_tok)[:16]}.., "
                              f"the directory's tokenizer has {tokenizer_sha256[:16]}..")
    best = meta.get("best")
    if best is not None and (type(best) not in (int, float) or not math.isfinite(best)):
        raise CheckpointError(f"{where}: 'best' is {best!r}")
    try:
        tensors = load_file(str(tensors_path))
        with safe_open(str(tensors_path), framework="pt") as f:
            stamp = (f.metadata() or {}).get("stamp")
    except FileNotFoundError:
        raise CheckpointError(f"{where}: {tensors_path.name} is missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{where}: {tensors_path.name} is truncated or corrupt: {e}") from None
    if stamp != meta.get("stamp"):
        raise CheckpointError(f"{where}: {tensors_path.name} and {json_path.name} are from two different saves")
    _load_model(model, tensors, where)
    _load_optimizer(opt, model, tensors, meta, where)
    rng = tensors.get("rng")
    try:
        if rng is None or rng.dtype != torch.uint8:
            raise ValueError("no uint8 'rng' tensor")
        gen.set_state(rng)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{where}: the random generator state is invalid ({e})") from None
    return step, total, (None if best is None else float(best))


def _checked(name: str, v: torch.Tensor, shape, where: str) -> torch.Tensor:
    if not v.is_floating_point():
        raise CheckpointError(f"{where}: {name} has dtype {v.dtype}; it must be floating point")
    if shape is not None and tuple(v.shape) != tuple(shape):
        raise CheckpointError(f"{where}: {name} has shape {tuple(v.shape)}, expected {tuple(shape)}")
    if not torch.isfinite(v).all():
        raise CheckpointError(f"{where}: {name} holds NaN or infinite values")
    return v


def _load_model(model, tensors: dict, where: str) -> None:
    expected = model.state_dict()
    saved = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    missing, unexpected = set(expected) - set(saved), set(saved) - set(expected)
    if missing or unexpected:
        hint = ""
        if any(k.startswith("top_length_head.") for k in unexpected):
            hint = ": it was trained with --top-lengths, pass it again"
        elif any(k.startswith("top_length_head.") for k in missing):
            hint = ": it was trained without --top-lengths, leave it out"
        raise CheckpointError(f"{where}: the weights do not match the model{hint} (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    model.load_state_dict({k: _checked(f"weight {k}", v, expected[k].shape, where) for k, v in saved.items()})


def _load_optimizer(opt, model, tensors: dict, meta: dict, where: str) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    groups = meta.get("param_groups")
    ours = opt.state_dict()["param_groups"]
    if (not isinstance(groups, list) or len(groups) != len(ours)
            or any(not isinstance(g, dict) or g.get("params") != o["params"] for g, o in zip(groups, ours))):
        raise CheckpointError(f"{where}: the optimizer's parameter groups do not match the model")
    for g in groups:
        for k, v in g.items():
            if k == "params":
                continue
            if isinstance(v, list):  # betas: JSON has no tuples
                if not all(type(x) in (int, float) for x in v):
                    raise CheckpointError(f"{where}: optimizer setting {k} is {str(v)[:40]}")
                g[k] = tuple(v)
            elif v is not None and type(v) not in (int, float, bool, str):
                raise CheckpointError(f"{where}: optimizer setting {k} is {str(v)[:40]}")
    state = {}
    for key, v in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, idx, name = key.split("/", 2)
        if not idx.isdigit() or int(idx) >= len(params):
            raise CheckpointError(f"{where}: optimizer state for unknown parameter {idx}")
        shape = None if v.dim() == 0 else params[int(idx)].shape
        state.setdefault(int(idx), {})[name] = _checked(f"optimizer {key}", v, shape, where)
    scalars = meta.get("optim_scalars") or {}
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{where}: 'optim_scalars' is not an object")
    for key, v in scalars.items():
        idx, _, name = str(key).partition("/")
        if not idx.isdigit() or int(idx) >= len(params) or type(v) not in (int, float, bool):
            raise CheckpointError(f"{where}: optimizer value {key} is invalid")
        state.setdefault(int(idx), {})[name] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{where}: the optimizer state does not fit ({type(e).__name__}: {e})") from None
