"""One generation request, whichever door it comes through (the command line, the Python
API, the HTTP server), and the defaults those doors share.

A request is the prompt, its length (roots and/or characters), stop strings, one seed, the
manager's sampling (:class:`SamplingConfig`) and the renderer's settings
(:class:`RendererSettings`). The one seed drives both models: the manager's draws and the
renderer's. :meth:`GenerationRequest.validated` is the one place its values are checked.

The defaults, defined here once:

- ``DEFAULT_MANAGER_TEMPERATURE`` 0.8: a little below the model's own distribution, which
  keeps the text on the rails; the README's and the benchmark's setting.
- ``DEFAULT_ROOTS`` 200 roots (about 700 characters) when neither roots nor characters
  are asked for.
- ``DEFAULT_BLOCK_ROOTS`` 256 roots per block for one request alone (the command line's
  ``generate``, ``TextPipeline``): how often its text is rendered (and printed with
  ``--stream``) while the manager plans on. The text never depends on it. Each flood pays
  a fixed cost a pass (about ten passes a block, whatever its size), so on a CPU a request
  alone writes 1.35x the chunks a second at 256 as at 64 (``scripts/block_size_cost.py``, ``docs/log/notebook.md``,
  2026-12-07), about a thousand characters a block.
- ``DEFAULT_SERVE_BLOCK_ROOTS`` 64 roots per round for the server's engine (``serve``,
  ``create_app``, ``Engine``): how often each request's text streams (a few hundred
  characters an event); its floods pool every request's block, so they are large anyway.

This module imports no torch, so the command line reads its defaults for ``--help``.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral
from typing import Optional

from ..errors import FractalFloodError
from ..render.options import DecodeOptions
from ..sampling.config import MAX_SEED, SEED_LIMIT, SamplingConfig, check_seed

DEFAULT_MANAGER_TEMPERATURE = 0.8
DEFAULT_MANAGER = SamplingConfig(DEFAULT_MANAGER_TEMPERATURE)
DEFAULT_ROOTS = 200
DEFAULT_BLOCK_ROOTS = 256
DEFAULT_SERVE_BLOCK_ROOTS = 64
DRAWN_SEED_BITS = 32  # a seed drawn for a caller who gave none: short enough to retype

__all__ = ["DEFAULT_BLOCK_ROOTS", "DEFAULT_SERVE_BLOCK_ROOTS", "DEFAULT_MANAGER", "DEFAULT_MANAGER_TEMPERATURE", "DEFAULT_ROOTS",
           "DRAWN_SEED_BITS", "MAX_SEED", "SEED_LIMIT", "GenerationRequest", "RendererSettings",
           "draw_seed"]


def draw_seed() -> int:
    """A random seed, for a caller who gave none (it is reported, so the run can be repeated)."""
    return secrets.randbelow(2 ** DRAWN_SEED_BITS)


@dataclass(frozen=True)
class RendererSettings:
    """The renderer's side of a request: the decoder's name and its options, ``None`` for
    the pipeline's own. The options' ``seed`` is not used: the request's seed replaces it."""

    decoder: Optional[str] = None
    options: Optional[DecodeOptions] = None

    def decode_options(self, default: DecodeOptions, seed: int) -> DecodeOptions:
        """These options (or ``default``) seeded with the request's ``seed``, validated."""
        return replace(self.options or default, seed=seed).validate()


def _count(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (Integral, float)) or not math.isfinite(value) \
            or int(value) != value or value < 1:
        raise FractalFloodError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class GenerationRequest:
    """What one caller wants. ``roots`` bounds the manager's tokens, ``max_chars`` the text
    (with only ``max_chars``, at most that many roots are planned); neither: ``DEFAULT_ROOTS``.
    ``manager`` is the manager's sampling, ``renderer`` the renderer's settings; ``seed``
    drives both."""

    prompt: str = ""
    roots: Optional[int] = None
    max_chars: Optional[int] = None
    stop: tuple = ()
    seed: int = 0
    manager: SamplingConfig = DEFAULT_MANAGER
    renderer: RendererSettings = field(default_factory=RendererSettings)

    def validated(self) -> "GenerationRequest":
        """This request with its values checked and normalised (a FractalFloodError names
        the first bad one). The prompt's and stop strings' characters are the tokenizer's
        to check."""
        if not isinstance(self.prompt, str):
            raise FractalFloodError(f"prompt must be a string, got {self.prompt!r}")
        roots, max_chars = _count("roots", self.roots), _count("max_chars", self.max_chars)
        try:
            seed = check_seed(self.seed)
        except ValueError as e:
            raise FractalFloodError(str(e)) from None
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise FractalFloodError("stop strings must be non-empty strings")
        if not isinstance(self.manager, SamplingConfig):
            raise FractalFloodError(f"manager must be a SamplingConfig, got {self.manager!r}")
        if not isinstance(self.renderer, RendererSettings):
            raise FractalFloodError(f"renderer must be RendererSettings, got {self.renderer!r}")
        if self.renderer.options is not None:
            try:
                self.renderer.options.validate()
            except (TypeError, ValueError) as e:
                raise FractalFloodError(str(e)) from None
        return replace(self, roots=roots, max_chars=max_chars, seed=seed, stop=stop)

    @property
    def root_budget(self) -> int:
        """The most roots the manager plans for this request."""
        if self.roots is not None:
            return int(self.roots)
        return int(self.max_chars) if self.max_chars is not None else DEFAULT_ROOTS

    def to_dict(self) -> dict:
        """This request as plain values (JSON's), which ``from_dict`` turns back into it."""
        m, r = self.manager, self.renderer
        return {"prompt": self.prompt, "roots": self.roots, "max_chars": self.max_chars, "stop": list(self.stop),
                "seed": self.seed, "manager": asdict(m),
                "renderer": {"decoder": r.decoder, "options": None if r.options is None else asdict(r.options)}}

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationRequest":
        r = d["renderer"]
        options = None if r["options"] is None else DecodeOptions(**r["options"])
        return cls(d["prompt"], d["roots"], d["max_chars"], tuple(d["stop"]), d["seed"], SamplingConfig(**d["manager"]),
                   RendererSettings(r["decoder"], options))

    # read-only names the engine's requests had before
    @property
    def sampling(self) -> SamplingConfig:
        return self.manager

    @property
    def decoder(self) -> Optional[str]:
        return self.renderer.decoder

    @property
    def options(self) -> Optional[DecodeOptions]:
        return self.renderer.options
