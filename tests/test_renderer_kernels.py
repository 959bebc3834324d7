"""The renderer's CPU inference kernels (``models/renderer_kernels.py``): the C attention and
tanh GELU against PyTorch's within a stated tolerance, a block through them against the
module path, a whole level's draw in one call against the module path's scores and choices
(and alone == in any batch, the same work counted, the noise ids draws.randint's), the
shipped renderer's text the same either way, and the switch."""

import pytest
import torch
import torch.nn.functional as F

from fractal_flood.models import renderer_kernels
from fractal_flood.models.config import RendererConfig
from fractal_flood.models.layers import Block
from fractal_flood.models.renderer import FractalDiffusionModel
from fractal_flood.render import canvas
from fractal_flood.sampling import draws

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
    real = renderer_kernels.draw
    monkeypatch.setattr(renderer_kernels, "draw", lambda *a, **k: calls.append(1) or real(*a, **k))
    texts = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("FRACTAL_FLOOD_RENDER_KERNELS", flag)
        n = len(calls)
        texts[flag] = pipe.decoder_for(5).render(roots).root_texts()
        assert (len(calls) > n) == (flag == "1")
    assert len(texts["1"]) == 1024 and texts["1"] == texts["0"]


LEVELS = [{"name": "roots", "size": 50, "max_children": 4}, {"name": "chunks", "size": 30, "max_children": 6},
          {"name": "chars", "size": 12, "max_children": 0}]


def small_renderer(top_lengths: bool, d_model: int = 32, seed: int = 0) -> FractalDiffusionModel:
    torch.manual_seed(seed)
    return FractalDiffusionModel(RendererConfig(levels=LEVELS, n_layers=2, d_model=d_model, n_heads=4, timesteps=20,
                                                top_lengths=top_lengths)).eval()


def level_inputs(model, level, B, seed, full=False):
    g = torch.Generator().manual_seed(seed)
    L = model.max_lens[level]
    cond = torch.randint(0, model.levels[level].size, (B,), generator=g)
    item = torch.randint(0, 10_000, (B,), generator=g)
    lengths = None if full else torch.randint(0, L + 1, (B,), generator=g)
    return cond, item, torch.zeros_like(item), lengths, L


@pytest.mark.parametrize("seed", [0, 7, -3, 2**40 + 5, "per item"])
@pytest.mark.parametrize("level,L,high", [(0, 8, 1025), (1, 16, 66), (2, 3, 7)])
def test_the_noise_ids_are_draws_randint(seed, level, L, high):
    g = torch.Generator().manual_seed(level)
    item = torch.randint(0, 2**40, (40,), generator=g)
    draw_id = torch.randint(0, 9, (40,), generator=g)
    if seed == "per item":
        seed = torch.randint(-2**62, 2**62, (40,), generator=g)
    ours = renderer_kernels.noise(seed, draws.NOISE_STREAM, level, item, draw_id, L, high)
    assert torch.equal(ours, draws.randint(seed, draws.NOISE_STREAM, level, item, draw_id, (L,), high))


@torch.no_grad()
@pytest.mark.parametrize("top_lengths,d_model", [(True, 32), (False, 32), (True, 64)])
@pytest.mark.parametrize("level", [0, 1])
def test_a_level_drawn_in_one_call_is_the_module_paths_draw(monkeypatch, top_lengths, d_model, level):
    """Scores within tolerance of ``model.denoise`` item by item (the module path, kernels
    off), the same tokens and child lengths as the reference draw, the pad past each length."""
    model = small_renderer(top_lengths, d_model)
    full = level == 0 and not top_lengths  # the top canvas has every slot when no head sizes it
    cond, item, draw_id, lengths, L = level_inputs(model, level, 23, seed=level + d_model, full=full)
    noise = draws.randint(3, draws.NOISE_STREAM, level, item, draw_id, (L,), model.num_classes(level))
    tokens, child, scores = renderer_kernels.draw(model, level, cond, noise, lengths, logits=True)
    monkeypatch.setenv("FRACTAL_FLOOD_RENDER_KERNELS", "0")
    t = torch.full((1,), model.config.timesteps - 1)
    for b in range(cond.shape[0]):
        n = L if lengths is None else int(lengths[b])
        if n:
            logits, _ = model.denoise(level, cond[b:b + 1], noise[b:b + 1, :n], t)
            torch.testing.assert_close(scores[b, :n], logits[0], atol=1e-5, rtol=1e-5)
        assert (tokens[b, n:] == model.pad_id(level)).all() and (scores[b, n:] == 0).all()
    ref = canvas.draw(model, level, cond, item, draw_id, lengths, 3, 0.0)
    assert torch.equal(tokens, ref.tokens)
    assert (child is None) == (ref.child_lengths is None)
    if child is not None:
        assert torch.equal(child, ref.child_lengths)


@torch.no_grad()
def test_an_items_draw_is_the_same_alone_and_in_any_batch():
    model = small_renderer(True, 64)
    cond, item, draw_id, lengths, L = level_inputs(model, 0, 300, seed=4)  # > one tile of canvases
    noise = draws.randint(3, draws.NOISE_STREAM, 0, item, draw_id, (L,), model.num_classes(0))
    tokens, child, scores = renderer_kernels.draw(model, 0, cond, noise, lengths, logits=True)
    for b in (0, 1, 150, 299):
        one = renderer_kernels.draw(model, 0, cond[b:b + 1], noise[b:b + 1], lengths[b:b + 1], logits=True)
        assert torch.equal(one[0][0], tokens[b]) and torch.equal(one[1][0], child[b])
        assert torch.equal(one[2][0], scores[b])  # bit for bit
    part = renderer_kernels.draw(model, 0, cond[77:], noise[77:], lengths[77:], logits=True)
    assert torch.equal(part[2], scores[77:])


@torch.no_grad()
def test_the_one_call_draw_counts_the_packed_passes_work(monkeypatch):
    model = small_renderer(True)
    for level in (0, 1):
        cond, item, draw_id, lengths, L = level_inputs(model, level, 40, seed=9)
        for max_batch in (65536, 3):
            fast, ref = canvas.Work(), canvas.Work()
            canvas.draw(model, level, cond, item, draw_id, lengths, 1, 0.0, max_batch=max_batch, work=fast)
            monkeypatch.setenv("FRACTAL_FLOOD_RENDER_KERNELS", "0")
            canvas.draw(model, level, cond, item, draw_id, lengths, 1, 0.0, max_batch=max_batch, work=ref)
            monkeypatch.delenv("FRACTAL_FLOOD_RENDER_KERNELS")
            assert fast == ref and fast.passes > 1


@torch.no_grad()
def test_the_one_call_draw_is_taken_only_where_it_applies(monkeypatch):
    model = small_renderer(True)
    cond, item, draw_id, lengths, L = level_inputs(model, 1, 10, seed=2)
    calls = []
    real = renderer_kernels.draw
    monkeypatch.setattr(renderer_kernels, "draw", lambda *a, **k: calls.append(1) or real(*a, **k))
    canvas.draw(model, 1, cond, item, draw_id, lengths, 1, 0.0)
    assert len(calls) == 1
    canvas.draw(model, 1, cond, item, draw_id, lengths, 1, 0.7)  # sampling: the tensor path
    canvas.draw(model, 1, cond, item, draw_id, lengths, 1, 0.0, packed=False)  # the padded reference
    model.train()
    canvas.draw(model, 1, cond, item, draw_id, lengths, 1, 0.0)
    assert len(calls) == 1


@torch.no_grad()
def test_the_one_call_draw_refuses_ids_and_lengths_outside_its_tables():
    """Whatever reaches it, the C draw reads only inside its tables: a bad id or length is a
    ValueError (the module path's embedding raises too), never a read past the weights."""
    model = small_renderer(True)
    cond, item, draw_id, lengths, L = level_inputs(model, 1, 6, seed=5)
    noise = draws.randint(3, draws.NOISE_STREAM, 1, item, draw_id, (L,), model.num_classes(1))
    renderer_kernels.draw(model, 1, cond, noise, lengths)  # fine as drawn
    for bad in (lambda c, n, ln: (c + 10**6, n, ln), lambda c, n, ln: (c - 10**6, n, ln),
                lambda c, n, ln: (c, n + 10**6, ln), lambda c, n, ln: (c, n, ln + L + 1),
                lambda c, n, ln: (c, n, ln - 10)):
        c, n, ln = bad(cond.clone(), noise.clone(), lengths.clone())
        with pytest.raises(ValueError):
            renderer_kernels.draw(model, 1, c, n, ln)
    with pytest.raises(ValueError):
        renderer_kernels.draw(model, 1, cond, noise[:2], lengths)  # rows of noise for two items of six
