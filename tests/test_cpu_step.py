"""The decode step compiled for the CPU (one C call for every layer) against the eager step:
the same hidden states and cache within a stated tolerance, every row the same in any batch
bit for bit, weights changed in place are picked up, and the switch is checked."""

import pytest
import torch

from fractal_flood.manager import cpu_step
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig

TOL = 1e-5  # hidden states of unit scale after a few layers: summation order and exp's last bits

pytestmark = pytest.mark.skipif(cpu_step.library() is None, reason="no C compiler built the step")


def model(width=64, heads=4, layers=3, classes=16, context=32, seed=0):
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=512, n_layers=layers, d_model=width, n_heads=heads,
                                   context=context, head_classes=classes)).eval()


def caches(m):
    return [c.k for c in m.kv_caches], [c.v for c in m.kv_caches]


@pytest.mark.parametrize("width,heads", [(64, 4), (48, 2), (40, 5), (128, 4)])
@torch.no_grad()
def test_steps_equal_the_eager_steps(width, heads):
    m = model(width, heads)
    B, P = 3, 9
    m.setup_cache(B)
    idx = torch.randint(0, 512, (B, 30), generator=torch.Generator().manual_seed(width))
    m.hidden_cached(idx[:, :P], torch.arange(P))  # prefill (eager), then both step from it
    k, v = caches(m)
    step = cpu_step.CpuStep(m, k, v)
    for t in range(P, 30):
        before = [(a.clone(), b.clone()) for a, b in zip(k, v)]
        eager = m.hidden_cached(idx[:, t:t + 1], torch.tensor([t]))[:, 0]
        eager_cache = [(a.clone(), b.clone()) for a, b in zip(k, v)]
        for (a, b), (a0, b0) in zip(zip(k, v), before):
            a.copy_(a0), b.copy_(b0)
        native = step.hidden(idx[:, t], torch.full((B,), t))
        torch.testing.assert_close(native, eager, atol=TOL, rtol=TOL)
        for (ea, eb), a, b in zip(eager_cache, k, v):
            torch.testing.assert_close(a, ea, atol=TOL, rtol=TOL)
            torch.testing.assert_close(b, eb, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("weights", ["int8", "bf16", "fp32"])
@torch.no_grad()
def test_a_row_is_the_same_alone_or_among_others_bit_for_bit(weights):
    """Also where batches of WIDE_ROWS or more multiply by the widened copy of int8 and bf16
    weights and smaller ones by the stored bits (cpu_step.c)."""
    m = model()
    S = 33
    m.setup_cache(S)
    g = torch.Generator().manual_seed(1)
    m.hidden_cached(torch.randint(0, 512, (S, 31), generator=g), torch.arange(31))
    k, v = caches(m)
    step = cpu_step.CpuStep(m, k, v, weights=weights)
    tok = torch.randint(0, 512, (S,), generator=g)
    pos = torch.randint(0, 31, (S,), generator=g)  # every row at its own position
    saved = [(a.clone(), b.clone()) for a, b in zip(k, v)]
    together = step.hidden(tok, pos)
    for rows in (1, 2, 3, 4, 5, 11, 32):
        for start in (0, S - rows):
            for (a, b), (a0, b0) in zip(zip(k, v), saved):
                a.copy_(a0), b.copy_(b0)
            part = step.hidden(tok[start:start + rows], pos[start:start + rows], row0=start)
            assert torch.equal(part, together[start:start + rows]), (rows, start)


@torch.no_grad()
def test_weights_changed_in_place_are_used():
    m = model()
    m.setup_cache(1)
    step = cpu_step.CpuStep(m, *caches(m))
    before = step.hidden(torch.tensor([3]), torch.tensor([0]))
    m.blocks[0].mlp.c_fc.weight.mul_(1.5)
    after = step.hidden(torch.tensor([3]), torch.tensor([0]))
    torch.testing.assert_close(after, m.hidden_cached(torch.tensor([[3]]), torch.tensor([0]))[:, 0],
                               atol=TOL, rtol=TOL)
    assert not torch.equal(before, after)


def test_the_switch(monkeypatch):
    m = model()
    assert cpu_step.usable(m, "cpu", torch.float32)
    assert not cpu_step.usable(m, "cpu", torch.bfloat16)
    for switch in ("native", "step", "body"):
        monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", switch)
        assert cpu_step.usable(m, "cpu", torch.float32)
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "eager")
    assert not cpu_step.usable(m, "cpu", torch.float32)
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "fast")
    with pytest.raises(ValueError, match="FRACTAL_FLOOD_CPU_STEP='fast'"):
        cpu_step.wanted()


@pytest.fixture(scope="module")
def shipped():
    from fractal_flood.models import checkpoint as ckpt

    return ckpt.load_model_dir(None, "cpu", torch.float32, optional=("peer",))


def _tokens(m, sampling, seed, runtime, monkeypatch, n=512):
    from fractal_flood.manager.stream import ARStream
    from fractal_flood.sampling.tokens import SamplingConfig

    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", runtime)
    stream = ARStream(m, 1, SamplingConfig(**sampling), "cpu", seed=seed)
    assert (stream._native is not None) == (runtime == "native")
    stream.start(torch.tensor([1, 2, 3]))
    return stream.generate(n)[0]


@pytest.mark.parametrize("part", ["manager", "peer"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.8, top_k=40),
                                      dict(temperature=1.3)], ids=str)
def test_the_shipped_models_write_the_eager_tokens_over_512_steps(shipped, part, sampling, monkeypatch):
    """The shipped manager and AR peer, 512 steps (two window slides): the compiled step's
    tokens are the eager step's, greedy and sampled (with a top-k row)."""
    m = getattr(shipped, part)
    assert torch.equal(_tokens(m, sampling, 5, "native", monkeypatch), _tokens(m, sampling, 5, "eager", monkeypatch))


def test_top_p_streams_part_only_at_a_near_tie(shipped, monkeypatch):
    """Top-p keeps the tokens whose probabilities reach p: a token at the cut is in or out by
    the last bits, so a stream can part from the eager one where a draw falls within ~1e-6
    of a boundary (measured: the AR peer at temperature 1.3, top-p 0.9, seeds 5-11, 512 steps:
    seed 5 parts at step 75, the other six never). Seven streams: each agrees with the eager
    one for its first 64 steps, and at most one of them parts at all."""
    sampling = dict(temperature=1.3, top_p=0.9)
    parted = 0
    for seed in range(5, 12):
        a = _tokens(shipped.peer, sampling, seed, "native", monkeypatch)
        b = _tokens(shipped.peer, sampling, seed, "eager", monkeypatch)
        assert torch.equal(a[:64], b[:64]), seed
        parted += not torch.equal(a, b)
    assert parted <= 1


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.3])
@torch.no_grad()
def test_the_loop_in_c_writes_the_tokens_of_one_call_a_step(batch, temperature, monkeypatch):
    """ARStream.generate's C loop (decode_draw_steps, up to each window slide) against one
    ``_step`` a token: the same tokens bit for bit across four window slides, the same
    window, step counters and positions, whatever the cut of the calls."""
    from fractal_flood.manager.stream import ARStream
    from fractal_flood.sampling.tokens import SamplingConfig

    m = model(context=16)
    prompt = torch.randint(0, 512, (5,), generator=torch.Generator().manual_seed(2))
    runs = []
    for switch in ("native", "step"):  # the default: the loop in C; one C call a step
        monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", switch)
        s = ARStream(m, batch, SamplingConfig(temperature=temperature), "cpu", seed=7)
        assert s._native_loop == (switch == "native") and s._native.draws
        s.start(prompt)
        toks = torch.cat([s.generate(n) for n in (1, 13, 0, 30, 7, 19)], dim=1)
        runs.append((toks, s._window.clone(), s._steps.clone(), s.pos, int(s._pos), s.steps, s.prefills))
    (a, *rest_a), (b, *rest_b) = runs
    assert a.shape == (batch, 70) and torch.equal(a, b)
    assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(rest_a, rest_b))
    assert runs[0][6] >= 4 + 1  # the prompt's prefill and at least four slides


def test_the_loop_refuses_what_it_cannot_take():
    m = model(context=16)
    m.setup_cache(1)
    step = cpu_step.CpuStep(m, *caches(m))
    tok, steps = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    seeds, temp = torch.zeros(1, dtype=torch.long), torch.ones(1)
    with pytest.raises(ValueError, match="pass the context"):
        step.steps(tok, 10, seeds, steps, temp, torch.empty(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="tok must be"):
        step.steps(tok.int(), 0, seeds, steps, temp, torch.empty(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="out must be"):
        step.steps(tok, 0, seeds, steps, temp, torch.empty(1, 4, dtype=torch.long)[:, ::2])
    with pytest.raises(ValueError, match="window must be"):
        step.steps(tok, 0, seeds, steps, temp, torch.empty(1, 2, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))


def test_the_16_lane_exponential_is_the_scalar_one_bit_for_bit():
    """The step's attention and GELU take e^x 16 lanes at a time (cpu_step.c's
    exp_approx_vec); every lane must be the scalar exp_approx of its input, clamps included."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(4096, generator=g) * 30, torch.rand(4096, generator=g) * -200,
                   torch.tensor([0.0, -0.0, -87.0, -87.0001, 88.0, 88.0001, 1e30, -1e30, 0.5, -0.5,
                                 0.34657359, -0.34657359, 1e-40, -1e-40, 87.5, -86.9])])
    x = x[:-11].contiguous()  # 8,197 = 512 blocks of 16 and a zero-padded tail of 5
    vec, scalar = torch.empty_like(x), torch.empty_like(x)
    cpu_step.library().exp_both(x.data_ptr(), x.numel(), vec.data_ptr(), scalar.data_ptr())
    assert torch.equal(vec.view(torch.int32), scalar.view(torch.int32))
    finite = x.abs() < 80
    torch.testing.assert_close(scalar[finite].double(), x[finite].double().exp(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("hd", [16, 32, 64])
def test_the_attention_scores_16_keys_at_a_time_are_one_at_a_time_bit_for_bit(hd):
    """The step's attention scores 16 keys at once (cpu_step.c's key_scores: the lane tree's
    additions for 16 keys by shuffles); every score must be the one-key lane tree's, for
    lengths with and without a remainder, signed zeros and large values included."""
    g = torch.Generator().manual_seed(hd)
    for n in (1, 15, 16, 17, 40, 256):
        q = torch.randn(hd, generator=g) * 3
        keys = torch.randn(n, hd, generator=g) * torch.rand(n, 1, generator=g) * 10
        keys[::7] = 0.0
        keys[1::9] = -0.0
        vec, scalar = torch.empty(n), torch.empty(n)
        cpu_step.library().attention_scores_both(q.data_ptr(), keys.data_ptr(), n, hd, 0.125, vec.data_ptr(),
                                                 scalar.data_ptr())
        assert torch.equal(vec.view(torch.int32), scalar.view(torch.int32)), n
        torch.testing.assert_close(scalar.double(), (keys.double() @ q.double()) * 0.125, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights", ["int8", "bf16", "w8a8", "fp32"])
@torch.no_grad()
def test_a_prefill_is_its_steps_one_position_at_a_time_bit_for_bit(weights):
    """``CpuStep.prefill`` (a prompt, a window slide) writes the cache bits that T single steps
    at positions 0..T-1 write, in any cache row, and the eager prefill's within the tolerance."""
    m = model(context=32)
    S, T = 4, 21
    m.setup_cache(S)
    k, v = caches(m)
    step = cpu_step.CpuStep(m, k, v, weights=weights)
    tokens = torch.randint(0, 512, (T,), generator=torch.Generator().manual_seed(7))
    for c in (*k, *v):
        c.zero_()
    hidden = step.prefill(tokens, row=2)
    prefilled = [c[2].clone() for c in (*k, *v)]
    assert all(c[[0, 1, 3]].abs().sum() == 0 for c in (*k, *v))  # no other row written
    for c in (*k, *v):
        c.zero_()
    one_by_one = torch.cat([step.hidden(tokens[t:t + 1], torch.tensor([t]), row0=2) for t in range(T)])
    assert torch.equal(hidden, one_by_one)
    for a, c in zip(prefilled, (*k, *v)):
        assert torch.equal(a, c[2])
    for c in (*k, *v):  # the caches alone (the last layer stops at its keys and values): the same bits
        c.zero_()
    assert step.prefill(tokens, row=2, hidden=False) is None
    for a, c in zip(prefilled, (*k, *v)):
        assert torch.equal(a, c[2])
    assert all(c[[0, 1, 3]].abs().sum() == 0 for c in (*k, *v))
    if weights == "fp32":  # the eager prefill of the same tokens
        for c in (*k, *v):
            c.zero_()
        eager = m.hidden_cached(tokens[None].expand(S, T), torch.arange(T))[2]
        torch.testing.assert_close(hidden, eager, atol=TOL, rtol=TOL)
        for a, c in zip(prefilled, (*k, *v)):
            torch.testing.assert_close(a, c[2], atol=TOL, rtol=TOL)


def test_a_prefill_refuses_what_it_cannot_take():
    m = model(context=32)
    m.setup_cache(2)
    step = cpu_step.CpuStep(m, *caches(m))
    with pytest.raises(ValueError, match="pass the context"):
        step.prefill(torch.zeros(33, dtype=torch.long))
    with pytest.raises(ValueError, match="cache row 2 outside"):
        step.prefill(torch.zeros(3, dtype=torch.long), row=2)
    assert step.prefill(torch.zeros(0, dtype=torch.long)).shape == (0, 64)


@torch.no_grad()
def test_a_slot_step_is_the_step_and_its_bookkeeping_bit_for_bit():
    """``CpuStep.slot_step`` (the slot cache's step with its window, pending token, position and
    step counter updated in the same call) against ``step`` and those updates as tensor ops,
    rows at their own positions and temperatures; a position outside the window or the
    context is a ValueError with nothing written."""
    m = model(context=32)
    S = 5
    m.setup_cache(S)
    g = torch.Generator().manual_seed(11)
    m.hidden_cached(torch.randint(0, 512, (S, 20), generator=g), torch.arange(20))
    k, v = caches(m)
    step = cpu_step.CpuStep(m, k, v)
    tok = torch.randint(0, 512, (S,), generator=g)
    pos = torch.tensor([20, 3, 17, 9, 20])
    seeds, steps = torch.arange(S) + 40, torch.tensor([0, 5, 2, 9, 1])
    temp = torch.tensor([0.0, 0.8, 1.3, 0.8, 0.5])
    window = torch.randint(0, 512, (S, 32), generator=g)
    saved = [c.clone() for c in (*k, *v)]
    # the reference: step, then the bookkeeping as tensor ops
    ref_window = window.clone()
    ref_window[torch.arange(S), pos] = tok
    ids, ref_hidden = step.step(tok.clone(), pos.clone(), seeds, steps.clone(), temp)
    ref_cache = [c.clone() for c in (*k, *v)]
    for c, c0 in zip((*k, *v), saved):
        c.copy_(c0)
    out = torch.full((S, 3), -1, dtype=torch.long)
    t, p, s, w = tok.clone(), pos.clone(), steps.clone(), window.clone()
    hidden = step.slot_step(t, p, seeds, s, temp, w, out[:, 1])
    assert torch.equal(hidden, ref_hidden)
    assert torch.equal(t, ids) and torch.equal(out[:, 1], ids) and (out[:, [0, 2]] == -1).all()
    assert torch.equal(p, pos + 1) and torch.equal(s, steps + 1) and torch.equal(w, ref_window)
    for c, r in zip((*k, *v), ref_cache):
        assert torch.equal(c, r)
    for bad in (torch.tensor([20, 3, 32, 9, 20]), torch.tensor([20, -1, 17, 9, 20])):
        t, p, s, w = tok.clone(), bad.clone(), steps.clone(), window.clone()
        before = [c.clone() for c in (*k, *v)]
        with pytest.raises(ValueError, match="position outside"):
            step.slot_step(t, p, seeds, s, temp, w, out[:, 0])
        assert torch.equal(t, tok) and torch.equal(p, bad) and torch.equal(w, window)
        assert all(torch.equal(c, b) for c, b in zip((*k, *v), before))
    with pytest.raises(ValueError, match="window must be"):
        step.slot_step(tok.clone(), pos.clone(), seeds, steps.clone(), temp, window[:, ::2], out[:, 0])
