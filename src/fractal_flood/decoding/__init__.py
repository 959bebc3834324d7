"""Decoders: the sequential baseline and the Flash Flood (best-of-K and adaptive).

``canvas.py`` holds the two renderer passes (draw, score), ``choose.py`` the pure choice
functions (best-of-K, adaptive), ``flood.py`` the one loop over levels, and
``sequential.py`` the item-by-item reference every flood is tested against.
"""

from ..decoder_names import DECODERS
from .base import DecodeOptions, Decoder
from .flood import AdaptiveFloodDecoder, FlashFloodDecoder, render
from .result import LevelStats, RenderResult, advance
from .sequential import SequentialDecoder

# by name; the names alone live in decoder_names.py, importable without torch (--help)
_CLASSES = {"flood": FlashFloodDecoder, "adaptive": AdaptiveFloodDecoder, "sequential": SequentialDecoder}
assert tuple(_CLASSES) == tuple(DECODERS)


def make_decoder(name: str, model, alphabet: str, options: DecodeOptions | None = None) -> Decoder:
    """Build a decoder by name: ``flood`` (best-of-K), ``adaptive`` or ``sequential``."""
    try:
        cls = _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown decoder {name!r} (choose from: {', '.join(DECODERS)})") from None
    return cls(model, alphabet, options)


__all__ = ["DecodeOptions", "Decoder", "FlashFloodDecoder", "AdaptiveFloodDecoder", "SequentialDecoder",
           "LevelStats", "RenderResult", "DECODERS", "make_decoder", "render"]
