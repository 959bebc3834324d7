"""The window rule of the manager's decoding, one definition for ``ARStream``, the slot cache
and ``generate_reference`` (so all three agree token for token).

The model sees at most ``context`` tokens. When the window is full (``context`` tokens in
the cache) and one more token is pending, the ``context + 1`` tokens are cut to their last
``keep_length(context)``, which are re-encoded at positions 0..keep-1 (learned absolute
positions cannot shift, so the cache is rebuilt, not rolled), and generation goes on.
Halving means one re-prefill every ``context - keep`` tokens.
"""

from __future__ import annotations

import torch


def keep_length(context: int) -> int:
    """How many tokens a window slide keeps: half the context, at least one."""
    return max(1, context // 2)


def kept_window(window: torch.Tensor, context: int) -> torch.Tensor:
    """The tokens a slide keeps, a view of ``window`` (..., n) from index
    ``context + 1 - keep_length(context)`` on.

    Given the full window of ``context + 1`` tokens, its last ``keep`` tokens; given the
    ``context`` cache slots alone (the pending token held apart), the kept tokens before the
    pending one (``keep - 1``), to be prefilled at positions 0..keep-2."""
    return window[..., context + 1 - keep_length(context):]
