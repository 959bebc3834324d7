"""The renderer's CPU inference kernels (``models/renderer_kernels.py``): the C attention and
tanh GELU against PyTorch's within a stated tolerance, a block through them against the
module path, the shipped renderer's text the same either way, and the switch."""

import pytest
import torch
import torch.nn.functional as F

from fractal_flood.models import renderer_kernels
from fractal_flood.models.layers import Block

pytestmark = pytest.mark.skipif(renderer_kernels.library() is None, reason="no C compiler built the kernels")

TOL = 2e-6  # unit-scale inputs: another summation order and e^x to ~2 ulp


def reference_attention(qkv, valid, H):
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in qkv.split(C, 2))
    mask = None if valid is None else valid.view(B, 1, 1, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, C)


@pytest.mark.parametrize("B,T,H,hd", [(1, 1, 4, 16), (7, 9, 4, 16), (5, 17, 4, 16), (3, 20, 2, 32), (4, 6, 3, 12)])
@pytest.mark.parametrize("masked", [True, False])
def test_attention_is_pytorchs_within_tolerance(B, T, H, hd, masked):
    g = torch.Generator().manual_seed(B * T + hd)
    qkv = torch.randn(B, T, 3 * H * hd, generator=g)
    valid = None
    if masked:
        valid = torch.rand(B, T, generator=g) > 0.3
        valid[:, 0] = True  # the renderer's condition token is always valid
    torch.testing.assert_close(renderer_kernels.attention(qkv, valid, H), reference_attention(qkv, valid, H),
                               atol=TOL, rtol=TOL)


def test_masked_keys_weigh_nothing():
    qkv = torch.randn(2, 5, 3 * 32)
    valid = torch.tensor([[True, True, False, False, False], [True] * 5])
    out = renderer_kernels.attention(qkv, valid, 2)
    changed = qkv.clone()
    changed[0, 2:, 32:] = 1e3  # the masked keys' keys and values of item 0
    again = renderer_kernels.attention(changed, valid, 2)
    assert torch.equal(out[0], again[0])


def test_gelu_is_pytorchs_tanh_gelu_within_tolerance():
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(2)) * 4
    x[:3] = torch.tensor([0.0, -30.0, 30.0])
    torch.testing.assert_close(renderer_kernels.gelu_(x.clone()), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="contiguous"):
        renderer_kernels.gelu_(torch.randn(4, 6).t())


@torch.no_grad()
def test_a_block_through_the_kernels_is_the_module_path_within_tolerance():
    torch.manual_seed(3)
    block = Block(64, 4).eval()
    x = torch.randn(9, 7, 64)
    valid = torch.arange(7).view(1, 7) <= torch.randint(0, 7, (9, 1))
    ours = renderer_kernels.block_forward(block, x, valid)
    torch.testing.assert_close(ours, block(x, attn_mask=valid.view(9, 1, 1, 7)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(renderer_kernels.block_forward(block, x, None), block(x), atol=1e-5, rtol=1e-5)


def test_the_switch(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("FRACTAL_FLOOD_RENDER_KERNELS", raising=False)
    with torch.no_grad():
        assert renderer_kernels.wanted(x)
        assert not renderer_kernels.wanted(x.double())
        monkeypatch.setenv("FRACTAL_FLOOD_RENDER_KERNELS", "0")
        assert not renderer_kernels.wanted(x)
    monkeypatch.delenv("FRACTAL_FLOOD_RENDER_KERNELS")
    assert not renderer_kernels.wanted(x)  # gradients on: training's path


@pytest.mark.slow
def test_the_shipped_renderer_writes_the_same_text_either_way(monkeypatch):
    """1,024 roots the shipped manager wrote, rendered by the flood with and without the
    kernels: the same text for every root (the kernels change the last bits of the scores,
    which did not move any choice here)."""
    from fractal_flood.generation.pipeline import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu")
    roots = torch.tensor(pipe.generate("ROMEO:", roots=1024, seed=11).root_ids[:1024], dtype=torch.long)
    calls = []
    real = renderer_kernels.block_forward
    monkeypatch.setattr(renderer_kernels, "block_forward", lambda *a: calls.append(1) or real(*a))
    texts = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("FRACTAL_FLOOD_RENDER_KERNELS", flag)
        n = len(calls)
        texts[flag] = pipe.decoder_for(5).render(roots).root_texts()
        assert (len(calls) > n) == (flag == "1")
    assert len(texts["1"]) == 1024 and texts["1"] == texts["0"]
