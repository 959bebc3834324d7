"""The decoders by name. The names alone import nothing heavy, so the command line lists
them without importing torch (``--help``); :func:`make_decoder` imports the classes when
it is called."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import DecodeOptions, Decoder

DECODERS = ("flood", "adaptive", "sequential")


def make_decoder(name: str, model, alphabet: str, options: DecodeOptions | None = None) -> Decoder:
    """Build a decoder by name: ``flood`` (best-of-K), ``adaptive`` or ``sequential``."""
    from .flood import AdaptiveFloodDecoder, FlashFloodDecoder
    from .sequential import SequentialDecoder
    classes = {"flood": FlashFloodDecoder, "adaptive": AdaptiveFloodDecoder, "sequential": SequentialDecoder}
    assert tuple(classes) == DECODERS
    try:
        cls = classes[name]
    except KeyError:
        raise ValueError(f"unknown decoder {name!r} (choose from: {', '.join(DECODERS)})") from None
    return cls(model, alphabet, options)
