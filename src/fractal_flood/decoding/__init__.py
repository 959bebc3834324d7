"""Decoders: the sequential baseline and the Flash Flood (best-of-K and adaptive)."""

from ..decoder_names import DECODERS
from .base import DecodeOptions, Decoder
from .flood import FlashFloodDecoder
from .result import LevelStats, RenderResult
from .sequential import SequentialDecoder


def make_decoder(name: str, model, alphabet: str, options: DecodeOptions | None = None) -> Decoder:
    """Build a decoder by name: ``flood`` (best-of-K), ``adaptive`` or ``sequential``."""
    if name == "flood":
        return FlashFloodDecoder(model, alphabet, options)
    if name == "adaptive":
        return FlashFloodDecoder(model, alphabet, options, adaptive=True)
    if name == "sequential":
        return SequentialDecoder(model, alphabet, options)
    raise ValueError(f"unknown decoder {name!r} (choose from: {', '.join(DECODERS)})")


__all__ = ["DecodeOptions", "Decoder", "FlashFloodDecoder", "SequentialDecoder", "LevelStats",
           "RenderResult", "DECODERS", "make_decoder"]
