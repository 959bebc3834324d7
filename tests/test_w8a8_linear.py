"""The w8a8 format (``models/w8a8_linear.py``, ``w8a8_linear.c``): int8 weights and int8
activations, the sums in integers. The kernel is its tensor-op reference bit for bit, a row
alone is the same row in any batch, the VNNI build is the portable build bit for bit, and the
compiled step in w8a8 stays near the eager model of the format (its hidden states within a
stated tolerance; its tokens the same until a quantisation near-tie)."""

import ctypes
import os
import shutil
import subprocess

import pytest
import torch

from fractal_flood import native
from fractal_flood.manager import cpu_step
from fractal_flood.manager.stream import ARStream
from fractal_flood.models import w8a8_linear, weight_formats
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import SamplingConfig

pytestmark = pytest.mark.skipif(w8a8_linear.library() is None or cpu_step.library() is None,
                                reason="no C compiler built the kernels")

SHAPES = [(1, 128, 384), (4, 128, 512), (7, 512, 128), (33, 128, 384), (3, 100, 70), (5, 33, 130), (2, 5, 3)]


def operands(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * 3
    x[0, : min(3, K)] = 0.0
    if M > 2:
        x[2] = 0.0  # an all-zero row: scale 1, every q 0
    w = torch.randn(N, K, generator=g) * 0.1
    return x, w, torch.randn(N, generator=g)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_kernel_is_the_reference_bit_for_bit_alone_or_in_a_batch(shape, with_bias):
    M, K, N = shape
    x, w, b = operands(M, K, N)
    b = b if with_bias else None
    packed, sc = weight_formats.stored(w, "w8a8")
    q, s = weight_formats.int8_quantised(w)
    y = w8a8_linear.linear(x, packed, sc, N, b)
    assert torch.equal(y, w8a8_linear.reference(x, q, s, b))
    rows = torch.cat([w8a8_linear.linear(x[i:i + 1], packed, sc, N, b) for i in range(M)])
    assert torch.equal(y, rows)
    # near float32's product, not equal to it: the format does change the numbers
    full = x @ w.t() + (b if b is not None else 0)
    assert (y - full).abs().max() < 0.05 * full.abs().max() and not torch.equal(y, full)


def test_the_quantiser_rounds_to_nearest_even_and_the_layout_holds_its_sums():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -63.5]])  # scale 1: q = round(x), ties to even
    q, s = w8a8_linear.quantise_rows(x)
    assert s.item() == 1.0 and q.tolist() == [[127.0, 0.0, 2.0, 2.0, -0.0, -64.0]]
    w = torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.0, 0.0]])
    qw, sw = weight_formats.int8_quantised(w)
    packed, sc = weight_formats.stored(w, "w8a8")
    assert packed.shape == (1, 16, 4) and packed[0, 0].tolist() == qw[0].tolist() + [0]
    comp = sc[16:].view(torch.int32)
    assert comp[0].item() == 128 * int(qw[0].sum()) and comp[1].item() == 0 and sc[1].item() == sw[1].item()


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_the_portable_build_is_the_vnni_build_bit_for_bit(tmp_path):
    """Without -march=native the kernel takes its integer loops; the sums are exact either
    way, so the results are the same bits."""
    target = tmp_path / "portable.so"
    cc = shutil.which(os.environ.get("CC", "cc"))
    done = subprocess.run([cc, *native.FLAGS, "-o", str(target), str(w8a8_linear.SOURCE), "-lm"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(target))
    assert lib.w8a8_vnni() == 0
    for M, K, N in SHAPES:
        x, w, b = operands(M, K, N, seed=1)
        packed, sc = weight_formats.stored(w, "w8a8")
        y = torch.empty(M, N)
        assert lib.w8a8_linear(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(packed.data_ptr()),
                               ctypes.c_void_p(sc.data_ptr()), ctypes.c_void_p(b.data_ptr()),
                               ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(M), ctypes.c_int64(K),
                               ctypes.c_int64(N)) == 0
        assert torch.equal(y, w8a8_linear.linear(x, packed, sc, N, b))


def test_the_eager_model_of_the_format_takes_the_kernel_or_the_reference_alike():
    lin = torch.nn.Linear(128, 384)
    layer = weight_formats.W8A8Linear.of(lin)
    x = torch.randn(6, 128)
    with torch.no_grad():
        fast = layer(x)  # the kernel
    slow = layer(x.requires_grad_())  # with gradients: the reference
    q, s = weight_formats.int8_quantised(lin.weight)
    assert torch.equal(fast, slow.detach()) and torch.equal(fast, w8a8_linear.reference(x.detach(), q, s, lin.bias))
    with torch.no_grad():
        lin.weight.mul_(2)  # the cached packed copy follows the weight
        layer.weight.mul_(2)
        assert torch.equal(layer(x.detach()), w8a8_linear.reference(x.detach(), *weight_formats.int8_quantised(
            lin.weight), lin.bias))


# hidden states of unit scale: the last bits of the layer norm, attention and GELU, and
# where those move an activation across a rounding boundary of its quantiser, one step of
# 1/127 of its row's largest value in that product's input
W8A8_TOL = 2e-2


def model(seed=0, width=128, heads=4):
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=512, n_layers=2, d_model=width, n_heads=heads, context=64,
                                   head_classes=16)).eval()


@torch.no_grad()
def test_a_w8a8_stream_prefills_in_w8a8_and_steps_near_the_eager_model_of_the_format(monkeypatch):
    """A w8a8 stream's prompt prefill (the compiled step's operations, position by position)
    is the eager model of the format's within float32's last bits, not the float32 one; its
    first 48 tokens are the eager stream's (the steps' hidden states: the next test)."""
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_WEIGHTS", "w8a8")
    m = model()
    ref = weight_formats.dequantized_model(m, "w8a8")
    prompt = torch.tensor([5, 9, 2, 7, 7, 1, 3])
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "native")
    ours = ARStream(m, 1, SamplingConfig(0.8), "cpu", seed=4)
    assert ours._native.weights == "w8a8"
    ours.start(prompt)
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "eager")
    theirs = ARStream(ref, 1, SamplingConfig(0.8), "cpu", seed=4)
    assert theirs._native is None
    theirs.start(prompt)
    for a, b in zip(m.kv_caches, ref.kv_caches):
        torch.testing.assert_close(a.k, b.k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.v, b.v, atol=1e-5, rtol=1e-5)
    # and not the float32 prefill
    m32 = model()
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "eager")
    ARStream(m32, 1, SamplingConfig(0.8), "cpu", seed=4).start(prompt)
    assert (m32.kv_caches[0].k - m.kv_caches[0].k).abs().max() > 1e-3
    assert torch.equal(ours.generate(48), theirs.generate(48))


@torch.no_grad()
def test_w8a8_steps_stay_near_the_eager_steps_of_the_format():
    """From one eager prefill, each compiled w8a8 step's hidden states and cache against the
    eager model of the format's step (the same cache before each): most steps within 1e-5
    (float32's last bits), every step within W8A8_TOL (measured over 6 seeds x 51 steps:
    297 within 1e-5, the others up to 1.6e-2)."""
    ref = weight_formats.dequantized_model(model(seed=3), "w8a8")
    B, P = 3, 9
    ref.setup_cache(B)
    idx = torch.randint(0, 512, (B, 40), generator=torch.Generator().manual_seed(3))
    ref.hidden_cached(idx[:, :P], torch.arange(P))
    k, v = [c.k for c in ref.kv_caches], [c.v for c in ref.kv_caches]
    step = cpu_step.CpuStep(ref, k, v, weights="w8a8")
    worst, close = 0.0, 0
    for t in range(P, 40):
        before = [(a.clone(), b.clone()) for a, b in zip(k, v)]
        eager = ref.hidden_cached(idx[:, t:t + 1], torch.tensor([t]))[:, 0]
        for (a, b), (a0, b0) in zip(zip(k, v), before):
            a.copy_(a0), b.copy_(b0)
        ours = step.hidden(idx[:, t], torch.full((B,), t))
        gap = float((ours - eager).abs().max())
        worst, close = max(worst, gap), close + (gap <= 1e-5)
    assert worst <= W8A8_TOL and close >= 0.9 * (40 - P)
