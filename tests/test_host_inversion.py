"""The host inversions (NumPy float32 scalars) against the tensor ops they stand in for, bit for bit."""

import numpy as np
import pytest
import torch

from fractal_flood.models import class_head
from fractal_flood.sampling import host_inversion, tokens as sampling
from fractal_flood.sampling.tokens import (RowSampling, SamplingConfig, host_uniforms, invert_target,
                                           row_uniform, sample)


def _both(cdf: torch.Tensor, u: torch.Tensor):
    ids, targets = invert_target(cdf, u)
    host_ids, host_targets = host_inversion.invert(cdf.numpy(), u.numpy())
    return ids[:, 0].tolist(), targets[:, 0].tolist(), host_ids.tolist(), host_targets.tolist()


def test_invert_equals_the_tensor_inversion_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    B, V = 3000, 37
    logits = torch.randn(B, V, generator=g) * 4
    logits[::7, ::3] = float("-inf")  # exact zeros: empty slices
    cdf = logits.softmax(-1).cumsum(-1)
    u = row_uniform(torch.randint(0, 2 ** 62, (B,), generator=g), torch.arange(B))
    u[:5] = torch.tensor([1.0, 1.0 - 2 ** -24, 2 ** -25, 0.5, 1.0])  # the edges, and u = 1.0
    ids, targets, host_ids, host_targets = _both(cdf, u)
    assert host_ids == ids and host_targets == targets
    assert len(set(ids)) > V // 2


def test_invert_never_lands_on_an_empty_slice():
    cdf = torch.tensor([[0.0, 0.0, 5.0, 5.0], [2.0, 2.0, 4.0, 4.0], [3.0, 3.0, 3.0, 3.0]])
    ids, _, host_ids, _ = _both(cdf, torch.tensor([1.0, 1.0, 1.0]))
    assert host_ids == ids == [2, 2, 0]


def test_place_in_slice_equals_the_tensor_arithmetic():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(5000, generator=g) ** 8 + 1e-30  # down to tiny slices
    hi = torch.rand(5000, generator=g) + p
    target = hi - p * torch.rand(5000, generator=g) * 1.01  # a little outside too: clamped
    ref = ((target - (hi - p)) / p).clamp(0.0, 1.0)
    got = host_inversion.place_in_slice(target.numpy(), hi.numpy(), p.numpy()).tolist()
    assert got == ref.tolist()
    assert min(got) == 0.0 and max(got) == 1.0  # both clamps were exercised


def test_host_uniforms_are_row_uniform():
    seeds, steps = torch.tensor([0, 1, 2 ** 62 + 5, 77]), torch.tensor([0, 9, 3, 2 ** 40])
    got = host_uniforms(seeds, steps)
    assert got.dtype == np.float32 and got.tolist() == sampling._row_uniform_tensor(seeds, steps).tolist()


def _tensor_path(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(sampling, "HOST_DRAW_ROWS", 0)  # every batch takes the tensor ops
        return fn(*args).tolist()


V, K, C = 4096, 64, 32
TEMPS = [[0.8], [1.0, 0.0, 0.3], [0.0], [2.0, 0.05], [0.8, 0.0, 1.2, 0.5] * 5]


@pytest.mark.parametrize("temps", TEMPS, ids=str)
def test_host_class_draw_equals_the_tensor_draw_bit_for_bit(temps, monkeypatch):
    """The class draw of a small CPU batch on the host (greedy rows too) gives the tensor path's ids exactly."""
    g = torch.Generator().manual_seed(3)
    wc, wt = torch.randn(K, C, generator=g) * 2, torch.randn(V, C, generator=g) * 2
    B = len(temps)
    rows = RowSampling(torch.tensor(temps), torch.zeros(B, dtype=torch.long), torch.ones(B), filters=False)
    host, tensor = [], []
    for step in range(300):
        args = (torch.randn(B, C, generator=g), wc, wt, rows, torch.arange(B) * 1000003 + 17, torch.full((B,), step))
        host += class_head.draw(*args).tolist()
        tensor += _tensor_path(monkeypatch, class_head.draw, *args)
    assert host == tensor
    if any(t > 0 for t in temps):
        assert len(set(host)) > 150  # real draws, spread over the vocabulary


@pytest.mark.parametrize("temps", TEMPS, ids=str)
@pytest.mark.parametrize("top", [(0, 1.0), (5, 1.0), (0, 0.9)], ids=["plain", "top-k", "top-p"])
def test_host_sample_equals_the_tensor_sample_bit_for_bit(temps, top, monkeypatch):
    g = torch.Generator().manual_seed(4)
    B = len(temps)
    rows = RowSampling(torch.tensor(temps), torch.full((B,), top[0]), torch.full((B,), top[1]),
                       filters=top != (0, 1.0))
    host, tensor = [], []
    for step in range(200):
        args = (torch.randn(B, 1024, generator=g) * 3, rows, torch.arange(B) + 5, torch.full((B,), step))
        host += sample(*args).tolist()
        tensor += _tensor_path(monkeypatch, sample, *args)
    assert host == tensor
    if any(t > 0 for t in temps):
        assert len(set(host)) > (4 if top[0] else 50)


def test_the_host_path_is_taken_for_small_cpu_batches(monkeypatch):
    calls = []
    real = host_inversion.invert
    monkeypatch.setattr(host_inversion, "invert", lambda *a: calls.append(len(a[1])) or real(*a))
    wc, wt = torch.randn(K, C), torch.randn(V, C)
    big = sampling.HOST_DRAW_ROWS + 1
    for B in (1, sampling.HOST_DRAW_ROWS, big):
        rows = RowSampling.of([SamplingConfig(0.7)] * B)
        ids = class_head.draw(torch.randn(B, C), wc, wt, rows, torch.arange(B), torch.zeros(B, dtype=torch.long))
        assert ids.shape == (B,) and ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < V
    assert calls == [1, 1, sampling.HOST_DRAW_ROWS, sampling.HOST_DRAW_ROWS]  # two inversions a draw
    calls.clear()
    sample(torch.randn(2, 50), SamplingConfig(0.9), torch.arange(2), torch.zeros(2, dtype=torch.long))
    assert calls == [2]
