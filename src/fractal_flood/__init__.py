"""Fractal Flood: hierarchical parallel text generation (manager + Flash Flood renderer)."""

from .errors import (CheckpointError, DeviceError, FractalFloodError, TokenizerFileError,
                     UnknownCharacterError)
from .tokenizer import HierarchicalTokenizer
from .levels import Level
from .config import CausalLMConfig, RendererConfig
from .renderer import FractalDiffusionModel
from .causal_lm import CausalLM
from .sampling import SamplingConfig
from .decoding import DecodeOptions, FlashFloodDecoder, SequentialDecoder, make_decoder
from .pipeline import TextPipeline, load_pipeline
from .train import TrainOptions, run_training

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "HierarchicalTokenizer",
    "Level",
    "RendererConfig",
    "CausalLMConfig",
    "FractalDiffusionModel",
    "CausalLM",
    "SamplingConfig",
    "DecodeOptions",
    "FlashFloodDecoder",
    "SequentialDecoder",
    "make_decoder",
    "TextPipeline",
    "load_pipeline",
    "TrainOptions",
    "run_training",
    "FractalFloodError",
    "UnknownCharacterError",
    "TokenizerFileError",
    "CheckpointError",
    "DeviceError",
]
