"""Errors a user can cause. The CLI prints any of them as one line and exits non-zero."""


class FractalFloodError(Exception):
    """Base class for every error that is the user's input, not a bug."""


class UnknownCharacterError(FractalFloodError, ValueError):
    """A character outside the tokenizer's alphabet."""

    def __init__(self, char: str, position: int):
        self.char = char
        self.position = position
        super().__init__(
            f"unknown character {char!r} (U+{ord(char):04X}) at position {position}: "
            "it is not in the tokenizer's alphabet"
        )


class TokenizerFileError(FractalFloodError):
    """A tokenizer file that is missing, truncated or not a Fractal Flood tokenizer."""


class CheckpointError(FractalFloodError):
    """A model directory that is missing a file, truncated or from an incompatible config."""


class DeviceError(FractalFloodError):
    """A device that was asked for but is not available."""


class LevelSpecError(FractalFloodError, ValueError):
    """A token hierarchy that cannot be built: a malformed level list, or sizes that do not
    fit the text (a vocabulary smaller than the one below it)."""


class SettingError(FractalFloodError, ValueError):
    """An environment switch (``FRACTAL_FLOOD_*``) set to a value it does not take."""
