"""Counter-based random draws: every random number is a pure function of
``(seed, stream, level, item, draw, position, class)``.

This is what makes the decoders interchangeable. The sequential loop, the flood and the
adaptive flood give item ``i`` on try ``d`` exactly the same noise whatever the batch it
sits in, so they can be tested for identical output, and a flood split into memory-bounded
batches renders the same text as one big batch. It is a few elementwise integer ops
(murmur3's 32-bit finaliser on int64 lanes), cheap next to a transformer pass, and needs no
generator state, so it never synchronises with the host.

The manager's token draws use the same finaliser on a stream of their own: ``row_hash`` is a
pure function of ``(seed, step)`` per row (``tokens.row_uniform``).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
NOISE_STREAM = 0  # the corrupted input the renderer denoises
GUMBEL_STREAM = 1  # temperature sampling of its output
MANAGER_STREAM = 0x5EED0002  # keeps the manager's draws apart from the renderer's streams


def _fmix(h):
    # murmur3 fmix32 on int64 tensors or Python ints holding values in [0, 2^32): products
    # wrap (tensors) or grow (ints), and the mask keeps the same low 32 bits either way
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def _base(seed, stream: int, level: int, device) -> torch.Tensor:
    """The hash of (seed, stream, level): a 0-d tensor for an int seed, (B,) for (B,) seeds.

    Only the seed's low 32 bits enter (products are taken mod 2**32), so a tensor of seeds
    gives each item exactly the value its int seed gives (tested): a pooled flood over
    several requests, each with its own seed, draws what each request draws alone.
    """
    rest = (stream * 0x7F4A7C15 + level * 0x632BE5AB) & MASK32
    if isinstance(seed, torch.Tensor):
        return _fmix(((seed.to(device).long() & MASK32) * 0x9E3779B1 + rest) & MASK32)
    return _fmix(torch.as_tensor((seed * 0x9E3779B1 + rest) & MASK32, dtype=torch.long, device=device))


def hash_counters(seed, stream: int, level: int, item: torch.Tensor, draw: torch.Tensor,
                  tail: tuple[int, ...]) -> torch.Tensor:
    """32-bit hashes of shape ``item.shape + tail``; ``item``, ``draw`` and a tensor
    ``seed`` (one per item) broadcast; an int ``seed`` is shared by every item."""
    h = _fmix((item.long() & MASK32) ^ _base(seed, stream, level, item.device))
    h = _fmix((h + (draw.long() & MASK32) * 0x27D4EB2F) & MASK32)
    h = h.view(h.shape + (1,) * len(tail))
    n = 1
    for s in tail:
        n *= s
    counter = torch.arange(n, device=item.device, dtype=torch.long).view(tail)
    return _fmix((h ^ (counter * 0x165667B1 & MASK32)) & MASK32)


def randint(seed, stream: int, level: int, item: torch.Tensor, draw: torch.Tensor,
            tail: tuple[int, ...], high: int) -> torch.Tensor:
    """Integers in ``[0, high)``, shape ``item.shape + tail``."""
    return hash_counters(seed, stream, level, item, draw, tail) % high


def uniform(seed, stream: int, level: int, item: torch.Tensor, draw: torch.Tensor,
            tail: tuple[int, ...]) -> torch.Tensor:
    """Floats strictly inside (0, 1), 24 bits of resolution, shape ``item.shape + tail``."""
    h = hash_counters(seed, stream, level, item, draw, tail)
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def row_hash(seeds, steps):
    """The manager's 32-bit hash of (seed, step), one per row and step: tensors of int64 or
    Python ints alike (``_fmix`` keeps the low 32 bits of every product, which wrapping
    int64 and exact ints share)."""
    h = _fmix(((seeds >> 32) & MASK32) ^ MANAGER_STREAM)
    h = _fmix((h + (seeds & MASK32) * 0x9E3779B1) & MASK32)
    return _fmix((h + (steps & MASK32) * 0x27D4EB2F) & MASK32)
