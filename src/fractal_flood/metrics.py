"""Quality measures shared by evaluation and the bench (definitions in DESIGN.md)."""

from __future__ import annotations

import math

import torch


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


def render_fidelity(rendered: list[str], root_ids, tokenizer) -> dict:
    """Share of roots whose rendered text equals the tokenizer's decode of that root, and
    the character error rate (edit distance summed over roots / reference characters)."""
    ids = [int(r) for r in root_ids]
    if len(rendered) != len(ids):
        raise ValueError(f"{len(rendered)} rendered roots for {len(ids)} root ids")
    exact, errors, chars = 0, 0, 0
    for text, r in zip(rendered, ids):
        ref = tokenizer.root_text(r)
        chars += len(ref)
        if text == ref:
            exact += 1
        else:
            errors += edit_distance(text, ref)
    return {"fidelity": exact / len(ids) if ids else 1.0,
            "cer": errors / chars if chars else 0.0, "roots": len(ids)}


@torch.no_grad()
def bits_per_char(model, chunk_ids: list[int], n_chars: int, device) -> float:
    """Bits per character of a chunk sequence under a causal LM, scored in non-overlapping
    windows of the model's context (the first token of each window is context only)."""
    ids = torch.as_tensor(chunk_ids, dtype=torch.long)
    T = model.config.context
    total, count = 0.0, 0
    for s in range(0, max(len(ids) - 1, 0), T):
        win = ids[s:s + T + 1].to(device)
        if len(win) < 2:
            break
        logits = model(win[None, :-1]).float()  # (1, t, V)
        nll = torch.nn.functional.cross_entropy(logits[0], win[1:], reduction="sum")
        total += float(nll)
        count += len(win) - 1
    if count == 0 or n_chars == 0:
        return float("nan")
    # scale: the nats of the scored tokens, spread over the characters they cover
    return total / math.log(2) / (n_chars * count / max(len(ids), 1))
