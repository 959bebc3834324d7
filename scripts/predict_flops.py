"""Predicted matrix FLOPs per token (one level-1 chunk) of each way to render, from shapes
only (flops.py) and the held-out tail's real lengths: the prediction written next to each
speed change in docs/log/notebook.md. No model is loaded or run.

Usage: python scripts/predict_flops.py [MODEL_DIR]
"""

from __future__ import annotations

import sys

import torch

from fractal_flood.corpus.reader import load_corpus
from fractal_flood.corpus.streams import TokenStream
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.config import CausalLMConfig, RendererConfig, get_preset
from fractal_flood.models.flops import causal_lm_flops, renderer_pass_flops


def render_flops(cfg: RendererConfig, levels, roots: torch.Tensor, tables, packed: bool, passes: int) -> int:
    """K = 1 render of ``roots``: ``passes`` = 1 (denoise) or 2 (denoise + energy)."""
    total, items, lengths = 0, roots, None
    for level in range(len(levels) - 1):
        L = levels[level].max_children
        has_len = levels[level + 1].max_children > 0
        targets, table_len = tables[level]
        if lengths is None or not packed:
            groups = {L: len(items)}
        else:
            groups = {int(n): int(c) for n, c in enumerate(torch.bincount(lengths)) if c}
        for n, count in groups.items():
            total += renderer_pass_flops(cfg, level, count, 1 + n, energy=False, length_head=has_len)
            if passes == 2:
                total += renderer_pass_flops(cfg, level, count, 1 + n, energy=True, length_head=False)
        children = targets[items]
        keep = children != levels[level + 1].pad_id
        items = children[keep]
        if level + 1 < len(tables):
            lengths = tables[level + 1][1][items]
    return total


def main() -> None:
    model_dir = sys.argv[1] if len(sys.argv) > 1 else ckpt.default_model_dir()
    tok = ckpt.load_tokenizer(model_dir)
    levels = tok.levels
    roots = TokenStream.split(tok.encode(load_corpus())).val
    tables = [tok.expansion_table(i) for i in range(len(levels) - 1)]
    chunks = int(tables[0][1][roots].sum())
    print(f"held-out tail: {len(roots):,} roots, {chunks:,} chunks ({chunks / len(roots):.3f} chunks per root)")
    print(f"{'way to render (K = 1)':<58}{'MFLOP/chunk':>12}")
    seed = get_preset("seed").renderer
    rows = [(seed, False, 2, "seed 6x256, canvases padded to the maximum, denoise + energy"),
            (seed, False, 1, "seed 6x256, padded, denoise only"),
            (seed, True, 1, "seed 6x256, canvases sized to the text, denoise only")]
    for layers, width in [(3, 128), (2, 128), (2, 64), (1, 64), (2, 32)]:
        rows.append((dict(n_layers=layers, d_model=width, n_heads=4), True, 1,
                     f"{layers}x{width}, sized, denoise only"))
    for sizes, packed, passes, label in rows:
        cfg = RendererConfig(levels=[lv.to_dict() for lv in levels], **sizes)
        f = render_flops(cfg, levels, roots, tables, packed, passes)
        print(f"{label:<58}{f / chunks / 1e6:>12.2f}")
    for name, part, vocab, per in [("manager 4x128 (per root step, per chunk)", "manager", tok.num_roots,
                                    len(roots) / chunks),
                                   ("AR peer 4x128 (manager's size), per chunk", "peer", tok.num_chunks, 1.0),
                                   ("AR peer 6x256 (renderer's old size), per chunk", "seed-peer", tok.num_chunks, 1.0)]:
        sizes = get_preset("seed").peer if part == "seed-peer" else get_preset("small").manager
        cfg = CausalLMConfig(vocab_size=vocab, **sizes)
        print(f"{name:<58}{causal_lm_flops(cfg, 1, 1) * per / 1e6:>12.2f}")


if __name__ == "__main__":
    main()
