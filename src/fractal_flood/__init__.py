"""Fractal Flood: hierarchical parallel text generation (manager + Flash Flood renderer)."""

from .errors import (CheckpointError, DeviceError, FractalFloodError, TokenizerFileError,
                     UnknownCharacterError)

__version__ = "0.1.0"

# Everything else is imported on first use, so that ``fractal-flood --help`` (and any other
# light use of the package) does not pay for importing torch.
_LAZY = {
    "HierarchicalTokenizer": "hierarchy.tokenizer", "Level": "hierarchy.levels",
    "RendererConfig": "models.config", "CausalLMConfig": "models.config",
    "FractalDiffusionModel": "models.renderer", "CausalLM": "models.causal_lm",
    "SamplingConfig": "sampling.config",
    "DecodeOptions": "render.options",
    "GenerationRequest": "generation.request", "RendererSettings": "generation.request", "FlashFloodDecoder": "render.flood", "AdaptiveFloodDecoder": "render.flood",
    "SequentialDecoder": "render.sequential",
    "make_decoder": "render.decoders",
    "TextPipeline": "generation.pipeline", "load_pipeline": "generation.pipeline",
    "TrainOptions": "train.run", "run_training": "train.run",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "AdaptiveFloodDecoder",
    "SequentialDecoder",
    "make_decoder",
    "TextPipeline",
    "load_pipeline",
    "GenerationRequest",
    "RendererSettings",
    "TrainOptions",
    "run_training",
    "FractalFloodError",
    "UnknownCharacterError",
    "TokenizerFileError",
    "CheckpointError",
    "DeviceError",
]
