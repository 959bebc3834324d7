"""Where a generated text ends: stop strings and a character budget, block by block."""

from __future__ import annotations

from typing import Optional


class TextLimit:
    """Stop strings and a character budget over text that grows block by block.

    ``feed`` returns the text now safe to emit: the tail that could be the start of a stop
    string is held back until the next block decides it.
    """

    def __init__(self, stop: tuple = (), max_chars: Optional[int] = None):
        self.stop, self.max_chars = stop, max_chars
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""  # everything rendered, uncut
        self.emitted = 0
        self.finish_reason: Optional[str] = None

    def feed(self, new: str, last: bool) -> str:
        start = max(0, len(self.text) - self.hold)  # a stop string may span the boundary
        self.text += new
        end = len(self.text)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            end, self.finish_reason = min(hits), "stop"
        if self.max_chars is not None and end >= self.max_chars:
            end = self.max_chars
            if self.finish_reason is None:
                self.finish_reason = "length"
        if last and self.finish_reason is None:
            self.finish_reason = "length"
        safe = end if self.finish_reason else max(self.emitted, end - self.hold)
        out = self.text[self.emitted:safe]
        self.emitted = safe
        return out

    @property
    def result(self) -> str:
        return self.text[:self.emitted]
