"""Model directories: ``tokenizer.json`` plus, per model part, ``<part>.json`` (config) and
``<part>.safetensors`` (weights). Parts: ``renderer``, ``manager``, ``peer`` (the AR
baseline of the bench). Every file is written atomically (``fileio.atomic_write``:
temporary file in the same folder, fsync, rename), so a killed run never leaves a
half-written model.

Loading trusts nothing: JSON is size- and depth-capped, configs are range-checked and
built on the ``meta`` device before any memory is allocated, weights must be floating point,
finite and of the configured shapes, and each part must have been trained with the
directory's tokenizer (its JSON records the tokenizer file's sha256; a part written before
hashes were recorded is accepted). Every failure is one :class:`CheckpointError` line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, TokenizerFileError
from ..fileio import atomic_write, dumps, file_sha256, read_json, why_missing, write_text
from ..hierarchy.levels import check_hierarchy
from ..hierarchy.tokenizer import HierarchicalTokenizer
from .causal_lm import CausalLM
from .config import CausalLMConfig, RendererConfig
from .renderer import FractalDiffusionModel

FORMAT = "fractal-flood-model"
VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
MAX_META_BYTES = 1 << 20
PARTS = {"renderer": (FractalDiffusionModel, RendererConfig),
         "manager": (CausalLM, CausalLMConfig),
         "peer": (CausalLM, CausalLMConfig)}
# Upper bounds on config integers: far above any model this package trains, low enough that
# a hostile config cannot ask for absurd sizes. Every bounded field must also be >= 1.
CONFIG_MAX = {"n_layers": 1024, "d_model": 1 << 16, "n_heads": 1024, "timesteps": 1 << 20,
              "vocab_size": 1 << 24, "context": 1 << 20}
LEVEL_MAX = {"size": 1 << 24, "max_children": 1 << 12}  # a vocabulary, an expansion


def default_model_dir() -> Path:
    """The trained default shipped inside the package."""
    return Path(str(resources.files("fractal_flood") / "assets" / "model"))


# ---------------------------------------------------------------- writing


def save_part(model_dir: Path, part: str, model: torch.nn.Module, extra: dict | None = None,
              dtype: torch.dtype = torch.float16) -> None:
    """Weights first, then the config JSON that names them (with the same step stamp). The
    JSON records ``tokenizer_sha256``: the one in ``extra`` (training passes the tokenizer it
    trained with), else that of the directory's tokenizer file when it has one."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    if "tokenizer_sha256" not in extra and (model_dir / TOKENIZER_FILE).is_file():
        extra["tokenizer_sha256"] = file_sha256(model_dir / TOKENIZER_FILE)
    stamp = str(extra.get("step", 0))
    # tied weights (lm head = embedding) are stored once
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not k.startswith("lm_head.")}
    atomic_write(model_dir / f"{part}.safetensors",
                 lambda p: save_file(state, str(p), metadata={"part": part, "step": stamp}))
    meta = {"format": FORMAT, "version": VERSION, "part": part,
            "config": model.config.to_dict(), "dtype": str(dtype).replace("torch.", ""), **extra}
    write_text(model_dir / f"{part}.json", dumps(meta, indent=1) + "\n")


def save_tokenizer(model_dir: Path, tokenizer: HierarchicalTokenizer) -> str:
    """Write ``tokenizer.json``; -> the sha256 of the bytes written."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    text = dumps(tokenizer.to_dict(), ensure_ascii=False, indent=1)
    write_text(Path(model_dir) / TOKENIZER_FILE, text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- reading


def read_meta(model_dir: Path, part: str) -> dict:
    path = Path(model_dir) / f"{part}.json"
    if not path.is_file():
        raise CheckpointError(f"model directory {model_dir} has no {part}.json (missing file)")
    meta = read_json(path, f"{part} config", MAX_META_BYTES, CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("part") != part:
        raise CheckpointError(f"{path} is not a Fractal Flood {part} config")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has version {meta.get('version')!r}; this release reads {VERSION}")
    return meta


def check_config(config) -> None:
    """Range checks a config must pass before a model is built from it (ValueError)."""
    for f in fields(config):
        v = getattr(config, f.name)
        if f.name in CONFIG_MAX:
            if type(v) is not int or not 1 <= v <= CONFIG_MAX[f.name]:
                raise ValueError(f"{f.name} is {v!r}; expected an integer in 1 .. {CONFIG_MAX[f.name]}")
    if getattr(config, "d_model", 0) % getattr(config, "n_heads", 1):
        raise ValueError(f"d_model {config.d_model} is not a multiple of n_heads {config.n_heads}")
    if isinstance(config, RendererConfig):
        levels = config.levels
        if not isinstance(levels, list) or not 2 <= len(levels) <= 16:
            raise ValueError(f"levels is {str(levels)[:40]}; expected a list of 2 to 16 levels")
        for lv in levels:
            if (not isinstance(lv, dict) or set(lv) != {"name", "size", "max_children"}
                    or not isinstance(lv["name"], str)
                    or not all(type(lv[k]) is int and 0 <= lv[k] <= m for k, m in LEVEL_MAX.items())):
                raise ValueError(f"level {str(lv)[:60]} is not {{name, size, max_children}} with sizes in "
                                 f"{dict(LEVEL_MAX)}")
        check_hierarchy(levels)  # sizes >= 1, children >= 1 above the bottom, 0 at it


class _SkipNormalInit(torch.overrides.TorchFunctionMode):
    """``nn.init.normal_`` does nothing: on the meta device its reference implementation
    imports ``torch._dynamo``, a slow import every command would pay at its start, and a
    shape-only build needs no values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.init.normal_:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _build(cls, config):
    """Build on the meta device (no memory, no init) to learn the expected weight shapes."""
    with torch.device("meta"), _SkipNormalInit():
        return cls(config)


def _expected(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("lm_head.")}


def _check_weights(wpath: Path, expected: dict) -> None:
    """Names, dtypes and shapes from the safetensors header, before reading any tensor."""
    try:
        with safe_open(str(wpath), framework="pt") as f:
            names = set(f.keys())
            missing, unexpected = set(expected) - names, names - set(expected)
            if missing or unexpected:
                raise CheckpointError(f"{wpath} does not match its config (missing {sorted(missing)[:3]}, "
                                      f"unexpected {sorted(unexpected)[:3]})")
            for k, shape in expected.items():
                sl = f.get_slice(k)
                if tuple(sl.get_shape()) != shape:
                    raise CheckpointError(f"{wpath}: weight {k} has shape {tuple(sl.get_shape())}, "
                                          f"the config expects {shape}")
                if sl.get_dtype() not in ("F16", "BF16", "F32", "F64"):
                    raise CheckpointError(f"{wpath}: weight {k} has dtype {sl.get_dtype()}; "
                                          "weights must be floating point")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath} is truncated or corrupt: {e}") from None


def _check_tokenizer_hash(model_dir: Path, part: str, meta: dict) -> None:
    want = meta.get("tokenizer_sha256")
    if want is None:  # written before hashes were recorded: accepted
        return
    tok = model_dir / TOKENIZER_FILE
    if not isinstance(want, str) or not tok.is_file():
        raise CheckpointError(f"{model_dir / (part + '.json')} names a tokenizer, but {tok} is missing "
                              "or the hash is malformed")
    have = file_sha256(tok)
    if have != want:
        raise CheckpointError(f"{part} in {model_dir} was trained with the tokenizer of sha256 "
                              f"{want[:16]}.., but {tok} has sha256 {have[:16]}..: the directory mixes "
                              "two runs")


def load_part(model_dir: str | Path, part: str, device="cpu", dtype: torch.dtype | None = None):
    """-> (model in eval mode, meta dict). ``dtype`` None keeps float32 compute."""
    model_dir = Path(model_dir)
    _check_dir(model_dir)
    cls, cfg_cls = PARTS[part]
    meta = read_meta(model_dir, part)
    _check_tokenizer_hash(model_dir, part, meta)
    cpath = model_dir / (part + ".json")
    try:
        if not isinstance(meta.get("config"), dict):
            raise ValueError("'config' is not a JSON object")
        config = cfg_cls.from_dict(meta["config"])
        check_config(config)
        expected = _expected(_build(cls, config))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{cpath} has an invalid or incompatible config: "
                              f"{type(e).__name__}: {e}") from None
    wpath = model_dir / f"{part}.safetensors"
    if not wpath.is_file():
        raise CheckpointError(f"model directory {model_dir} has no {part}.safetensors (missing file)")
    _check_weights(wpath, expected)
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{wpath} is truncated or corrupt: {e}") from None
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise CheckpointError(f"{wpath}: weight {k} holds NaN or infinite values")
    model = cls(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.to(device=device, dtype=dtype or torch.float32).eval()
    return model, meta


def _check_dir(model_dir: Path) -> None:
    if not model_dir.exists():
        raise CheckpointError(why_missing(model_dir, "model directory"))
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


# ---------------------------------------------------------------- a whole directory


@dataclass
class ModelDir:
    """A loaded model directory. A part that was not asked for (or is optional and absent)
    is None; ``meta`` maps each loaded part to its JSON."""

    path: Path
    tokenizer: HierarchicalTokenizer
    renderer: Optional[FractalDiffusionModel] = None
    manager: Optional[CausalLM] = None
    peer: Optional[CausalLM] = None
    meta: dict = field(default_factory=dict)


_LOADERS = {"renderer": load_renderer, "manager": load_manager, "peer": load_peer}


def load_model_dir(model_dir: str | Path | None = None, device="cpu", dtype: torch.dtype | None = None,
                   parts: tuple = ("renderer", "manager"), optional: tuple = ()) -> ModelDir:
    """The one loader of a model directory (default: the shipped model): its tokenizer, the
    ``parts`` it must have and the ``optional`` parts it has, all checked against each other."""
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    out = ModelDir(path, load_tokenizer(path))
    for part in parts + tuple(p for p in optional if (path / f"{p}.json").is_file()):
        model, meta = _LOADERS[part](path, out.tokenizer, device, dtype)
        setattr(out, part, model)
        out.meta[part] = meta
    return out
