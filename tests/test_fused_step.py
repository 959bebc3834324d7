"""The fused (Triton) decode step against the eager step it replaces.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py before anything imports Triton), so the CPU checks the kernels' arithmetic:
the same keys and values in the cache, the same hidden states up to float32 rounding, the
same uniforms bit for bit, and the same tokens. On a GPU the same tests run the compiled
kernels (``-m cuda`` adds a CUDA-graph run in fp32 and bf16).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fractal_flood.sampling import tokens as sampling  # noqa: E402
from fractal_flood.manager.stream import ARStream  # noqa: E402
from fractal_flood.models.causal_lm import CausalLM  # noqa: E402
from fractal_flood.models.config import CausalLMConfig  # noqa: E402
from fractal_flood.errors import DeviceError  # noqa: E402
from fractal_flood.manager.fused_step import FusedStep, interpreted  # noqa: E402
from fractal_flood.sampling.tokens import RowSampling, SamplingConfig  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(DEV == "cpu" and not interpreted(),
                                   reason="Triton kernels need a GPU or TRITON_INTERPRET=1")
pytestmark = needs_kernels

# (vocabulary, layers, width, heads, classes): a one-softmax head and a class-factored one,
# a width that is not a power of two (48 = 3 heads of 16) and one that is
SHAPES = [(64, 2, 48, 3, 0), (64, 2, 32, 2, 8), (96, 1, 40, 2, 12)]


def model_of(vocab, layers, width, heads, classes, context=16, seed=0):
    torch.manual_seed(seed)
    cfg = CausalLMConfig(vocab_size=vocab, n_layers=layers, d_model=width, n_heads=heads,
                         context=context, head_classes=classes)
    return CausalLM(cfg).eval().to(DEV)


def test_uniform_is_row_uniform_bit_for_bit():
    from fractal_flood.manager import fused_kernels

    g = torch.Generator().manual_seed(0)
    seeds = torch.cat([torch.tensor([0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1]),
                       torch.randint(0, 2 ** 62, (59,), generator=g)]).to(DEV)
    steps = torch.randint(0, 2 ** 40, (64,), generator=g).to(DEV)
    out = torch.empty(64, dtype=torch.float32, device=DEV)
    fused_kernels.uniform_kernel[(64,)](seeds, steps, out)
    assert torch.equal(out, sampling._row_uniform_tensor(seeds, steps))


def test_below_is_nextafter():
    """``_below``: one float32 product by 1 - 2**-24 is the float just below the total."""
    assert torch.tensor(0.99999994039535522, dtype=torch.float32).item() == 1 - 2 ** -24
    g = torch.Generator().manual_seed(1)
    totals = torch.cat([torch.rand(100_000, generator=g) * 4 + 1e-30,
                        torch.tensor([1.0, 2.0, 0.5, 1.5, 0.75, 1 - 2 ** -24, 1 + 2 ** -23])])
    below = totals * torch.tensor(1 - 2 ** -24, dtype=torch.float32)
    assert torch.equal(below, torch.nextafter(totals, torch.zeros_like(totals)))


def _eager_then_fused(model, fused, tok, pos, rows, seeds, steps):
    """Both steps from the same cache state: (eager hidden, eager ids, fused hidden, fused
    ids, max difference of the caches they leave)."""
    saved = [(c.k.clone(), c.v.clone()) for c in model.kv_caches]
    h = model.hidden_cached(tok, pos)[:, -1]
    ids = model.draw(h, rows, seeds, steps)
    eager_kv = [(c.k.clone(), c.v.clone()) for c in model.kv_caches]
    for c, (k, v) in zip(model.kv_caches, saved):
        c.k.copy_(k)
        c.v.copy_(v)
    fused_ids = fused.step(tok, pos, rows, seeds, steps).clone()
    ln = model.ln_f
    hf = torch.nn.functional.layer_norm(fused.x, ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)
    kv = max(max((c.k - k).abs().max().item(), (c.v - v).abs().max().item())
             for c, (k, v) in zip(model.kv_caches, eager_kv))
    return h, ids, hf, fused_ids, kv


@pytest.mark.parametrize("shape,block_v", [(SHAPES[0], None), (SHAPES[0], 16), (SHAPES[1], None),
                                           (SHAPES[2], None)])
@torch.no_grad()
def test_step_matches_eager_step(shape, block_v):
    """Step by step from the same cache: hidden states within 1e-5, the same cache
    entries, the same tokens (a greedy row, sampled rows at two temperatures). ``block_v``
    16: the one-softmax draw reads its 64 logits in 4 blocks (as a vocabulary over 1,024)."""
    model = model_of(*shape)
    B = 3
    model.setup_cache(B)
    fused = FusedStep(model, B)
    fused.block_v = block_v or fused.block_v
    rows = RowSampling.of([SamplingConfig(0.8), SamplingConfig(0), SamplingConfig(1.3)], DEV)
    seeds = torch.tensor([1, 2, 2 ** 40 + 3], device=DEV)
    steps = torch.tensor([0, 5, 9], device=DEV)
    tok = torch.randint(0, shape[0], (B, 1), generator=torch.Generator().manual_seed(2)).to(DEV)
    for p in range(6):
        h, ids, hf, fused_ids, kv = _eager_then_fused(model, fused, tok, torch.tensor([p], device=DEV),
                                                      rows, seeds, steps)
        assert (hf - h).abs().max().item() < 1e-5
        assert kv < 1e-5
        assert torch.equal(ids, fused_ids)
        tok, steps = ids[:, None], steps + 1


@pytest.mark.parametrize("shape,temperature", [(SHAPES[0], 0.8), (SHAPES[1], 0.8), (SHAPES[1], 0.0)])
def test_stream_fused_equals_eager(shape, temperature):
    """``ARStream(fused=True)`` writes the eager stream's tokens, across two window slides
    (context 16, 24 tokens after a 5-token prompt)."""
    model = model_of(*shape)
    prompt = torch.randint(0, shape[0], (2, 5), generator=torch.Generator().manual_seed(3)).to(DEV)
    runs = []
    for fused in (False, True):
        stream = ARStream(model, 2, SamplingConfig(temperature), DEV, seed=7, fused=fused)
        stream.start(prompt)
        runs.append(stream.generate(24))
    assert torch.equal(runs[0], runs[1])


def test_shipped_manager_and_peer():
    """The shipped models, a 3 x 128 manager and a 4 x 128 peer (their block sizes: 128
    wide, 256 slots, 128 classes of 128 roots; the peer's one softmax over 1,024 chunks):
    the eager stream's tokens."""
    from fractal_flood.models import checkpoint as ckpt

    m = ckpt.load_model_dir(None, torch.device(DEV), torch.float32, parts=("manager", "peer"))
    for model, prompt in ((m.manager, m.tokenizer.encode("ROMEO:")), (m.peer, m.tokenizer.encode_chunks("ROMEO:"))):
        runs = []
        for fused in (False, True):
            stream = ARStream(model, 1, SamplingConfig(0.8), DEV, seed=11, fused=fused)
            stream.start(torch.tensor(prompt, device=DEV))
            runs.append(stream.generate(3))
        assert torch.equal(runs[0], runs[1])


def test_top_k_rows_take_the_eager_draw():
    """Top-k needs the whole sorted table: the fused layers, then ``model.draw``."""
    model = model_of(*SHAPES[1])
    prompt = torch.tensor([1, 2, 3], device=DEV)
    runs = []
    for fused in (False, True):
        stream = ARStream(model, 1, SamplingConfig(0.9, top_k=5), DEV, seed=1, fused=fused)
        stream.start(prompt)
        runs.append(stream.generate(12))
    assert torch.equal(runs[0], runs[1])


def test_fused_and_compile_exclude_each_other():
    with pytest.raises(ValueError, match="choose one"):
        ARStream(model_of(*SHAPES[0]), 1, SamplingConfig(), DEV, compile=True, fused=True)


def test_needs_a_cache():
    with pytest.raises(RuntimeError, match="setup_cache"):
        FusedStep(model_of(*SHAPES[0]), 1)


def test_cpu_without_the_interpreter_is_one_clear_error(monkeypatch):
    model = model_of(*SHAPES[0]).cpu()
    model.setup_cache(1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(DeviceError, match="CUDA device"):
        FusedStep(model, 1)


@pytest.mark.cuda
def test_cuda_graph_fused_stream_fp32():
    """On a GPU, inside the stream's CUDA graph, fp32: the eager graph's tokens."""
    model = model_of(512, 4, 128, 4, 16, context=64)
    prompt = torch.randint(0, 512, (4, 8), generator=torch.Generator().manual_seed(4)).to(DEV)
    runs = []
    for fused in (False, True):
        stream = ARStream(model, 4, SamplingConfig(0.8), DEV, cuda_graph=True, seed=3, fused=fused)
        stream.start(prompt)
        runs.append(stream.generate(100))  # crosses a window slide
    assert torch.equal(runs[0], runs[1])


@pytest.mark.cuda
@torch.no_grad()
def test_cuda_bf16_step_close_to_eager():
    """bf16 weights: the fused step keeps activations in fp32 between kernels, the eager
    one rounds each op's output to bf16, so only closeness is asked: hidden states within
    5% (relative norm) step by step from the same cache."""
    model = model_of(512, 4, 128, 4, 16, context=64).to(torch.bfloat16)
    model.setup_cache(4)
    fused = FusedStep(model, 4)
    rows = RowSampling.of([SamplingConfig(0.8)] * 4, DEV)
    seeds, steps = torch.arange(4, device=DEV), torch.zeros(4, dtype=torch.long, device=DEV)
    tok = torch.randint(0, 512, (4, 1), generator=torch.Generator().manual_seed(5)).to(DEV)
    for p in range(8):
        h, ids, hf, _, _ = _eager_then_fused(model, fused, tok, torch.tensor([p], device=DEV), rows, seeds, steps)
        assert ((hf.float() - h.float()).norm() / h.float().norm()).item() < 0.05
        tok, steps = ids[:, None], steps + 1
