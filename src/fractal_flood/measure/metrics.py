"""Quality measures shared by training, evaluation and the bench (definitions in
docs/DESIGN.md): render fidelity, edit distance, held-out loss and bits per character."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import FractalFloodError


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def render_fidelity(tokenizer, root_ids, texts: list) -> tuple[float, float]:
    """-> (share of roots rendered exactly as ``tokenizer.root_text``, character error rate:
    edit distances summed over roots / reference characters)."""
    if len(root_ids) != len(texts):
        raise ValueError(f"{len(root_ids)} roots but {len(texts)} rendered texts")
    exact = edits = chars = 0
    for r, got in zip(root_ids, texts):
        want = tokenizer.root_text(int(r))
        chars += len(want)
        if got == want:
            exact += 1
        else:
            edits += edit_distance(got, want)
    return exact / max(1, len(texts)), edits / max(1, chars)


@torch.no_grad()
def bits_per_char(peer, tokenizer, texts: list, max_windows: int) -> Optional[float]:
    """Bits per character of ``texts`` under the AR peer: the texts are encoded to chunks,
    cut into windows of ``context + 1`` chunks (each window predicts its last ``context``),
    and the summed nats are divided by the characters of the predicted chunks and ln 2.
    Scores at most ``max_windows`` windows (from the start), to bound the cost."""
    T = peer.config.context
    windows = []
    for text in texts:
        ids = tokenizer.encode_chunks(text)
        windows += [ids[s:s + T + 1] for s in range(0, len(ids) - 1, T)]
        if len(windows) >= max_windows:
            break
    windows = windows[:max_windows]
    if not windows:
        return None
    chars = sum(len(tokenizer.spell(i)) for w in windows for i in w[1:])
    device = peer.wte.weight.device
    by_len = {}
    for w in windows:  # equal lengths batch together; only a text's last window is short
        by_len.setdefault(len(w), []).append(w)
    nats = 0.0
    for group in by_len.values():
        for s in range(0, len(group), 32):
            x = torch.tensor(group[s:s + 32], device=device)  # (n, L + 1)
            logits = peer(x[:, :-1]).float()  # (n, L, V)
            nats += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
    return nats / chars / math.log(2)


def bits_per_char_of_loss(nats_per_token: float, chars_per_token: float) -> float:
    """A mean loss in nats per token as bits per character of the text those tokens spell."""
    return nats_per_token / math.log(2) / chars_per_token


@torch.no_grad()
def heldout_loss(model, ids: torch.Tensor, device, max_windows: int = 64) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of the held-out stream."""
    if len(ids) < 2:
        raise FractalFloodError(f"the held-out text is {len(ids)} token(s) long: a loss needs at least 2; "
                                "give a longer corpus")
    T = min(model.config.context, len(ids) - 1)
    n = min(max_windows, (len(ids) - 1) // T)
    idx = torch.arange(n).unsqueeze(1) * T + torch.arange(T + 1)  # (n, T + 1)
    win = ids[idx].to(device)
    return float(model.loss(win[:, :-1], win[:, 1:]))
