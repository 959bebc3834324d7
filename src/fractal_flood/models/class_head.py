"""A class-factored output layer: P(token) = P(class) x P(token | class).

A 16,384-root manager spends most of a decode step in its output layer: a 16,384 x 128
matrix (8 MB in fp32) read for every step, and a softmax, cumulative sum and search over
16,384 entries per row. Here the vocabulary is cut into ``K`` classes of ``S = V / K``
consecutive ids (a BPE's ids run in merge order, roughly from frequent to rare, so these
are frequency bins, as in class-based language models). The model scores the ``K`` classes
with its own small matrix, and the ``S`` tokens of one class with the rows of the (tied)
embedding that belong to it. Decoding draws a class, then a token within it: ``K + S``
scores instead of ``V`` (128 + 128 instead of 16,384 for the shipped manager).

Temperature acts on each factor: ``P_T(t) = softmax(z_class / T)[c] x softmax(z_in_c / T)[t]``.
That is the distribution both paths here sample, and what top-k / top-p filter:

- ``draw`` (decoding): one uniform ``u`` per row; the class is the one whose slice of the
  class distribution holds ``u``, and ``u``'s place inside that slice, rescaled to (0, 1),
  picks the token within the class. Both are inversions of the same ``u``, so the pair is
  the token whose slice of the *whole* distribution (ids in order) holds ``u``. On the
  CPU, up to ``tokens.HOST_DRAW_ROWS`` rows invert on the host
  (``host_inversion``): the same ids bit for bit, ~30 fewer operator calls a step at batch 1.
- ``reference_draw``: the whole ``(B, V)`` log-probability table, then ``tokens.sample``
  at temperature 1 over it: the plain path ``draw`` is tested against.

Greedy (temperature 0) takes the most likely class, then its most likely token.
Top-k / top-p need the whole table (a sort over it), so rows that ask for them take the
reference path; the others keep the factored one.
"""

from __future__ import annotations

import numpy as np
import torch

from ..sampling import host_inversion
from . import rowwise_linear
from ..sampling.tokens import (RowSampling, SamplingConfig, host_uniforms, invert_target, on_host,
                               row_uniform, sample)


def class_log_probs(class_logits: torch.Tensor, token_logits: torch.Tensor,
                    temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """(..., K) class scores, (..., V) token scores -> (..., V) log P_T(token), ids in order.

    ``temperature`` is a float or a tensor broadcasting against (..., 1)."""
    K, V = class_logits.size(-1), token_logits.size(-1)
    zc = class_logits.float() / temperature
    zt = token_logits.float() / temperature
    within = zt.unflatten(-1, (K, V // K)).log_softmax(-1)  # (..., K, S)
    return (within + zc.log_softmax(-1).unsqueeze(-1)).flatten(-2)


def _class_block(token_weight: torch.Tensor, K: int, c: torch.Tensor) -> torch.Tensor:
    """(V, C) token rows, (N,) classes -> (N, V/K, C): each row's class's token rows."""
    return token_weight.view(K, token_weight.size(0) // K, -1).index_select(0, c)


def class_nll(h: torch.Tensor, class_weight: torch.Tensor, token_weight: torch.Tensor,
              targets: torch.Tensor) -> torch.Tensor:
    """(N, C) hidden states, (N,) targets -> (N,) -log P(target), from the target's class
    only: K class scores and S token scores a row instead of V (the training loss; equal
    to the cross-entropy over ``class_log_probs``, tested)."""
    K = class_weight.size(0)
    S = token_weight.size(0) // K
    c = targets // S
    zc = (h @ class_weight.t()).float()  # (N, K)
    zt = torch.bmm(_class_block(token_weight, K, c), h[:, :, None])[:, :, 0].float()  # (N, S)
    own = zt.gather(1, (targets - c * S)[:, None])[:, 0]
    class_lp = zc.log_softmax(-1).gather(1, c[:, None])[:, 0]
    return -(class_lp + own - zt.logsumexp(-1))


def _as_rows(rows, B: int, device) -> RowSampling:
    return RowSampling.of([rows] * B, device) if isinstance(rows, SamplingConfig) else rows


def reference_draw(h: torch.Tensor, class_weight: torch.Tensor, token_weight: torch.Tensor,
                   rows: RowSampling | SamplingConfig, seeds: torch.Tensor,
                   steps: torch.Tensor) -> torch.Tensor:
    """(B, C) hidden states -> (B,) ids from the whole table (the plain path)."""
    return _table_draw(h @ class_weight.t(), h @ token_weight.t(), _as_rows(rows, h.size(0), h.device),
                       seeds, steps)


def _table_draw(zc: torch.Tensor, zt: torch.Tensor, rows: RowSampling, seeds: torch.Tensor,
                steps: torch.Tensor) -> torch.Tensor:
    """(B, K) class scores, (B, V) token scores -> (B,) ids, one inversion over the table."""
    K, V = zc.size(-1), zt.size(-1)
    lp = class_log_probs(zc, zt, rows.divisors()[:, None])
    unit = RowSampling(torch.ones_like(rows.temperature), rows.top_k, rows.top_p, rows.filters)
    drawn = sample(lp, unit, seeds, steps)
    # greedy: the best class, then the best token in it
    best_class = zc.argmax(-1)
    in_best = zt.masked_fill(torch.arange(V, device=zt.device) // (V // K) != best_class[:, None],
                             float("-inf"))
    return torch.where(rows.temperature > 0, drawn, in_best.argmax(-1))


def draw(h: torch.Tensor, class_weight: torch.Tensor, token_weight: torch.Tensor,
         rows: RowSampling | SamplingConfig, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(B, C) hidden states -> (B,) ids: a class, then a token within it (K + S scores a row)."""
    K = class_weight.size(0)
    S = token_weight.size(0) // K
    if isinstance(rows, SamplingConfig) and rows.greedy:  # no tensors made: CUDA-graph safe
        c = rowwise_linear.linear(h, class_weight).argmax(-1)
        return c * S + rowwise_linear.gathered(h, token_weight, K, c).argmax(-1)
    rows = _as_rows(rows, h.size(0), h.device)
    if rows.filters:  # top-k / top-p rank tokens across classes: the whole table
        return _table_draw(rowwise_linear.linear(h, class_weight), rowwise_linear.linear(h, token_weight),
                           rows, seeds, steps)
    if on_host(h):
        return _draw_host(h, class_weight, token_weight, rows, seeds, steps)
    temp = rows.divisors()[:, None]
    zc = rowwise_linear.linear(h, class_weight).float()  # (B, K)
    pc = (zc / temp).softmax(-1)
    cdf = pc.cumsum(-1)
    c, target = invert_target(cdf, row_uniform(seeds, steps))  # (B, 1) each
    sampled = rows.temperature[:, None] > 0
    c = torch.where(sampled, c, zc.argmax(-1, keepdim=True))
    # the target's place inside the chosen class's slice [hi - p, hi) of the cdf, in [0, 1]
    p = pc.gather(1, c)
    inner = ((target - (cdf.gather(1, c) - p)) / p).clamp(0.0, 1.0)
    zt = rowwise_linear.gathered(h, token_weight, K, c[:, 0]).float()  # (B, S)
    j = invert_target((zt / temp).softmax(-1).cumsum(-1), inner[:, 0])[0]
    j = torch.where(sampled, j, zt.argmax(-1, keepdim=True))
    return (c * S + j)[:, 0]


def _draw_host(h, class_weight, token_weight, rows: RowSampling, seeds, steps) -> torch.Tensor:
    """``draw``'s sampled path with both inversions on the host (``host_inversion``): the
    same tensors in, the same ids out, bit for bit, in about half the operator calls."""
    K = class_weight.size(0)
    S = token_weight.size(0) // K
    temps = rows.temperature.tolist()
    temp = host_inversion.divisors(temps, h.device)
    zc = rowwise_linear.linear(h, class_weight).float()
    pc = (zc / temp).softmax(-1)
    cdf = host_inversion.host_view(pc.cumsum(-1))
    c, target = host_inversion.invert(cdf, host_uniforms(seeds, steps))
    greedy = not all(t > 0 for t in temps)
    if greedy:
        sampled = host_inversion.host_view(rows.temperature) > 0
        c = np.where(sampled, c, zc.argmax(-1).numpy())
    b = np.arange(len(temps))
    inner = host_inversion.place_in_slice(target, cdf[b, c], host_inversion.host_view(pc)[b, c])
    ct = torch.from_numpy(c)
    zt = rowwise_linear.gathered(h, token_weight, K, ct).float()  # (B, S)
    j, _ = host_inversion.invert(host_inversion.host_view((zt / temp).softmax(-1).cumsum(-1)), inner)
    if greedy:
        j = np.where(sampled, j, zt.argmax(-1).numpy())
    return torch.from_numpy(c * S + j)
