"""Fractal Flood: hierarchical parallel text generation (manager + Flash Flood renderer)."""

from .errors import (CheckpointError, DeviceError, FractalFloodError, TokenizerFileError,
                     UnknownCharacterError)
from .tokenizer import HierarchicalTokenizer, LevelSpec

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "HierarchicalTokenizer",
    "LevelSpec",
    "FractalFloodError",
    "UnknownCharacterError",
    "TokenizerFileError",
    "CheckpointError",
    "DeviceError",
]
