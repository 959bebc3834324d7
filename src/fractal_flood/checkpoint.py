"""Model directories: ``tokenizer.json`` plus, per model part, ``<part>.json`` (config) and
``<part>.safetensors`` (weights). Parts: ``renderer``, ``manager``, ``peer`` (the AR
baseline of the bench). Every file is written atomically (temporary file, fsync, rename),
so a killed run never leaves a half-written model; a bad directory gives one clear
:class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .causal_lm import CausalLM
from .config import CausalLMConfig, RendererConfig
from .errors import CheckpointError, TokenizerFileError
from .renderer import FractalDiffusionModel
from .tokenizer import HierarchicalTokenizer

FORMAT = "fractal-flood-model"
VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
PARTS = {"renderer": (FractalDiffusionModel, RendererConfig),
         "manager": (CausalLM, CausalLMConfig),
         "peer": (CausalLM, CausalLMConfig)}


def default_model_dir() -> Path:
    """The trained default shipped inside the package."""
    return Path(str(resources.files("fractal_flood") / "models" / "default"))


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_part(model_dir: Path, part: str, model: torch.nn.Module, extra: dict | None = None,
              dtype: torch.dtype = torch.float16) -> None:
    """Weights first, then the config JSON that names them (with the same step stamp)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    stamp = str(extra.get("step", 0))
    # tied weights (lm head = embedding) are stored once
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not k.startswith("lm_head.")}
    atomic_write(model_dir / f"{part}.safetensors",
                 lambda p: save_file(state, str(p), metadata={"part": part, "step": stamp}))
    meta = {"format": FORMAT, "version": VERSION, "part": part,
            "config": model.config.to_dict(), "dtype": str(dtype).replace("torch.", ""), **extra}
    atomic_write(model_dir / f"{part}.json",
                 lambda p: Path(p).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8"))


def read_meta(model_dir: Path, part: str) -> dict:
    path = Path(model_dir) / f"{part}.json"
    if not path.is_file():
        raise CheckpointError(f"model directory {model_dir} has no {part}.json (missing file)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("part") != part:
        raise CheckpointError(f"{path} is not a Fractal Flood {part} config")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has version {meta.get('version')!r}; this release reads {VERSION}")
    return meta


def load_part(model_dir: str | Path, part: str, device="cpu", dtype: torch.dtype | None = None):
    """-> (model in eval mode, meta dict). ``dtype`` None keeps float32 compute."""
    model_dir = Path(model_dir)
    _check_dir(model_dir)
    cls, cfg_cls = PARTS[part]
    meta = read_meta(model_dir, part)
    try:
        config = cfg_cls.from_dict(meta["config"])
        model = cls(config)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{model_dir / (part + '.json')} has an invalid or incompatible config: "
                              f"{type(e).__name__}: {e}") from None
    wpath = model_dir / f"{part}.safetensors"
    if not wpath.is_file():
        raise CheckpointError(f"model directory {model_dir} has no {part}.safetensors (missing file)")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath} is truncated or corrupt: {e}") from None
    try:
        missing, unexpected = _load_state(model, state)
    except CheckpointError as e:
        raise CheckpointError(f"{wpath}: {e}") from None
    if unexpected or missing:
        raise CheckpointError(f"{wpath} does not match its config (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    model.to(device=device, dtype=dtype or torch.float32).eval()
    return model, meta


def _load_state(model: torch.nn.Module, state: dict):
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        return missing, unexpected
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"weight {k} has shape {tuple(state[k].shape)}, the config expects {tuple(v.shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return set(), set()


def _check_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise CheckpointError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise CheckpointError(f"not a model directory: {model_dir}")


def load_tokenizer(model_dir: str | Path) -> HierarchicalTokenizer:
    model_dir = Path(model_dir)
    _check_dir(model_dir)
    path = model_dir / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"model directory {model_dir} has no {TOKENIZER_FILE} (missing file)")
    try:
        return HierarchicalTokenizer.load(path)
    except TokenizerFileError as e:
        raise CheckpointError(str(e)) from None


def load_renderer(model_dir, tokenizer: HierarchicalTokenizer, device="cpu", dtype=None):
    """Load the renderer and check that its levels match the tokenizer."""
    model, meta = load_part(model_dir, "renderer", device, dtype)
    expected = [lv.to_dict() for lv in tokenizer.levels]
    if model.config.levels != expected:
        raise CheckpointError(f"renderer in {model_dir} was trained for levels {model.config.levels}, "
                              f"but the tokenizer has {expected}")
    return model, meta


def load_manager(model_dir, tokenizer: HierarchicalTokenizer, device="cpu", dtype=None):
    """The manager: a causal LM over roots."""
    return _load_lm(model_dir, "manager", tokenizer.num_roots, "roots", device, dtype)


def load_peer(model_dir, tokenizer: HierarchicalTokenizer, device="cpu", dtype=None):
    """The AR peer (the bench's baseline): a causal LM over chunks."""
    return _load_lm(model_dir, "peer", tokenizer.num_chunks, "chunks", device, dtype)


def _load_lm(model_dir, part: str, vocab: int, unit: str, device, dtype):
    model, meta = load_part(model_dir, part, device, dtype)
    if model.config.vocab_size != vocab:
        raise CheckpointError(f"{part} in {model_dir} has vocabulary {model.config.vocab_size}, "
                              f"the tokenizer has {vocab} {unit}")
    return model, meta


def save_tokenizer(model_dir: Path, tokenizer: HierarchicalTokenizer) -> None:
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save(Path(model_dir) / TOKENIZER_FILE)
