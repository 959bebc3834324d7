"""Matrix FLOPs of the models' passes, counted from shapes (2 FLOPs per multiply-add).

Only matrix products count (projections, attention scores and mixing, output heads);
embeddings, norms and activations are a rounding error at these widths. Per layer and
position a GPT-2 block does 24 d^2 (qkv 6 d^2, output 2 d^2, MLP 16 d^2) plus attention
4 d per attended key. The bench divides the totals by the tokens written, so a renderer
draw and an autoregressive step are compared in the same unit.
"""

from __future__ import annotations


def block_flops(d: int, n_layers: int, positions: int, attended_keys: int) -> int:
    """``positions`` query positions, ``attended_keys`` (query, key) pairs in all."""
    return n_layers * (24 * d * d * positions + 4 * d * attended_keys)


def renderer_pass_flops(config, level: int, batch: int, canvas: int, energy: bool,
                        length_head: bool) -> int:
    """One renderer pass over ``batch`` canvases of ``canvas`` positions (condition included).
    A denoising pass runs the token head (and the length head) on the target slots; a scoring
    pass runs the energy head on one pooled vector per canvas."""
    d = config.d_model
    child = config.levels[level + 1]  # a Level dict (the model checked the list when built)
    f = block_flops(d, config.n_layers, batch * canvas, batch * canvas * canvas)
    slots = batch * (canvas - 1)
    if energy:
        f += batch * (2 * d * d + 2 * d)
    else:
        f += 2 * d * (child["size"] + 1) * slots  # the child vocabulary and its pad
        if length_head:
            f += 2 * d * (child["max_children"] + 1) * slots
    return f


def top_length_flops(config, roots: int) -> int:
    """The top-length head on ``roots`` roots (``RendererConfig.top_lengths``): two linears."""
    d = config.d_model
    return 2 * roots * (d * d + d * (config.levels[0]["max_children"] + 1))


def causal_lm_flops(config, batch: int, positions: int) -> int:
    """Decoding ``positions`` tokens per sequence with the static KV cache: every step's
    query attends over all ``context`` cache slots (masked, static shapes, as ARStream runs
    it), so that is what it costs."""
    d = config.d_model
    f = block_flops(d, config.n_layers, batch * positions, batch * positions * config.context)
    return f + 2 * d * output_scores(config) * batch * positions  # the LM head (tied to wte)


def output_scores(config) -> int:
    """Scores a decode step's output layer computes per row: the vocabulary, or for a
    class-factored head (``head_classes``) the classes plus one class's tokens (the
    whole table again when a row asks for top-k / top-p, not counted here)."""
    K = getattr(config, "head_classes", 0)
    return K + config.vocab_size // K if K else config.vocab_size
