"""The slot KV cache: a row's numbers do not depend on which other requests share the step."""

import pytest
import torch

from fractal_flood.manager import cpu_step
from fractal_flood.manager.slots import SlotManager, batch_invariant_attention, span_step
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import SamplingConfig


def model(classes=0, heads=4, context=32):
    torch.manual_seed(0)
    return CausalLM(CausalLMConfig(vocab_size=512, n_layers=2, d_model=64, n_heads=heads,
                                   context=context, head_classes=classes)).eval()


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


SHAPES = {  # (classes, heads, context, others' prompt lengths): spans of 1-2 steps, then 2-5
    "softmax": (0, 4, 32, 1), "classes": (16, 4, 32, 1),
    "span-hd16": (0, 4, 80, 9), "span-hd32": (16, 2, 80, 9)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("others", [0, 1, 2, 5, 11])
def test_a_rows_logits_are_bitwise_the_same_alone_or_batched(others, shape, threads):
    """The premise of 'every request's text equals its solo run' without luck: every
    linear layer computes each row alone (rowwise_linear), attention is batched matmuls
    (the fused kernel is not invariant on 2 threads), and the cache span it reads depends on the longest row (here others are 9 i + 1 tokens long,
    so ours reads 32 slots alone and up to 80 among others: span_step)."""
    classes, heads, context, stride = SHAPES[shape]
    m = model(classes, heads, context)
    prompt = [5, 9, 2, 7, 7, 1]
    alone = SlotManager(m, 1, "cpu")
    alone.add("me", prompt, SamplingConfig(0.9), seed=3)
    together = SlotManager(m, others + 1, "cpu")
    g = torch.Generator().manual_seed(others)
    for i in range(others):  # other requests at other positions, before and after ours
        if i == others // 2:
            together.add("me", prompt, SamplingConfig(0.9), seed=3)
        ids = torch.randint(0, 512, (1 + stride * i,), generator=g).tolist()
        together.add(i, ids, SamplingConfig(1.0), seed=i)
    if "me" not in together.owner:
        together.add("me", prompt, SamplingConfig(0.9), seed=3)
    row = together.owner.index("me")
    seen = {"alone": [], "together": []}

    def recording(name, inner, r):
        def step_rows(A, out):
            ids, hidden = inner(A, out)
            seen[name].append(hidden[r].clone())
            return ids, hidden
        return step_rows

    alone.step_rows = recording("alone", alone.step_rows, 0)
    together.step_rows = recording("together", together.step_rows, row)
    n = context + 8  # past the context: slides included
    a, b = alone.generate(n)[0], together.generate(n)[row]
    assert torch.equal(a, b)
    assert len(seen["alone"]) == len(seen["together"]) == n
    for x, y in zip(seen["alone"], seen["together"]):
        assert torch.equal(x, y)


def test_a_one_slot_cache_holds_one_row():
    m = model()
    s = SlotManager(m, 1, "cpu")
    assert s.k[0].shape[0] == 1 and s.slots == 1 and s.free == 1
    s.add("a", [1, 2], SamplingConfig(), seed=0)
    assert s.free == 0
    with pytest.raises(RuntimeError, match="no free slot"):
        s.add("b", [1], SamplingConfig(), seed=0)


@pytest.mark.parametrize("head_dim", [8, 16, 24, 32, 64])
def test_attention_over_a_longer_span_gives_the_same_bits(head_dim, threads):
    """span_step's claim on its own: masked slots past a row's position change nothing, to
    the bit, once the span is a multiple of the step; and the span-limited result is the
    whole cache's attention (up to rounding)."""
    step = span_step(head_dim)
    assert step % 16 == 0 and step * head_dim >= 400
    g = torch.Generator().manual_seed(head_dim)
    B, H, L = 6, 2, 8 * step
    q = torch.randn(B, H, 1, head_dim, generator=g)
    k, v = torch.randn(B, H, L, head_dim, generator=g), torch.randn(B, H, L, head_dim, generator=g)
    pos = torch.randint(0, 2 * step, (B,), generator=g)

    def attend(S):
        mask = (torch.arange(S)[None, None] <= pos[:, None, None])[:, None]
        return batch_invariant_attention(q, k[:, :, :S], v[:, :, :S], mask)

    shortest = attend(2 * step)
    for S in range(3 * step, L + 1, step):
        assert torch.equal(attend(S), shortest)
    torch.testing.assert_close(shortest, attend(L))


@pytest.mark.parametrize("sampling", [SamplingConfig(0.9), SamplingConfig(1.1, top_k=20, top_p=0.9)],
                         ids=str)
def test_one_row_in_slots_equals_the_stream_across_window_slides(sampling, monkeypatch):
    """The two callers of ``CausalLM.decode_hidden``: a request in the slot cache (its own
    position per row, batch-invariant attention over a span of the cache) and a batch-1
    ``ARStream`` (one position, fused attention over the whole cache) compute the same
    hidden states up to rounding and, with this seed, draw the same tokens, through five
    window slides (the one window rule). (The eager step: the compiled CPU step is off.)"""
    from fractal_flood.manager.stream import ARStream

    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "eager")

    context = 32
    m = model(context=context)
    prompt = [5, 9, 2, 7, 7, 1]
    n = 3 * context + 5
    slots = SlotManager(m, 1, "cpu")
    slots.add("me", prompt, sampling, seed=11)
    stream = ARStream(m, 1, sampling, "cpu", seed=11)
    stream.start(torch.tensor(prompt))
    seen = {"slots": [], "stream": []}
    inner_slots, inner_stream = slots.step_hidden, stream._step_forward

    def slots_hidden(A):
        hidden = inner_slots(A)
        seen["slots"].append(hidden[0].clone())
        return hidden

    def stream_hidden(tok, pos):
        hidden = inner_stream(tok, pos)
        seen["stream"].append(hidden[0, -1].clone())
        return hidden

    slots.step_hidden, stream._step_forward = slots_hidden, stream_hidden
    a, b = slots.generate(n)[0], stream.generate(n)[0]
    assert slots.prefills == stream.prefills == 6  # the prompt, then 5 slides (every 17 steps)
    assert len(seen["slots"]) == len(seen["stream"]) == n
    torch.testing.assert_close(torch.stack(seen["slots"]), torch.stack(seen["stream"]),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(a, b)


@pytest.mark.skipif(cpu_step.library() is None, reason="no C compiler built the compiled CPU step")
@pytest.mark.parametrize("sampling", [SamplingConfig(0.9), SamplingConfig(1.1, top_k=20, top_p=0.9)],
                         ids=str)
def test_the_compiled_step_gives_one_row_the_same_bits_in_slots_and_stream(sampling):
    """The compiled CPU step (the default here) in both callers: a row's hidden states and
    tokens are bit for bit the same in the slot cache and a batch-1 stream, through five
    window slides (each row is computed alone, whatever its caller)."""
    from fractal_flood.manager.stream import ARStream

    m = model(context=32)
    prompt = [5, 9, 2, 7, 7, 1]
    slots = SlotManager(m, 3, "cpu")
    slots.add("other", [3, 3, 3], SamplingConfig(1.0), seed=1)
    slots.add("me", prompt, sampling, seed=11)
    stream = ARStream(m, 1, sampling, "cpu", seed=11)
    assert slots._native is not None and stream._native is not None
    stream.start(torch.tensor(prompt))
    n = 3 * 32 + 5
    a, b = slots.generate(n)[1], stream.generate(n)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("prompt_len", [2, 9, 30])
@torch.no_grad()
def test_a_slot_row_is_a_stream_bit_for_bit_prefills_and_slides_included(prompt_len):
    """A slot row's cache after its prompt's prefill, and after window slides, is an
    ``ARStream``'s bit for bit (one row's prefill takes the stream's own attention call), so
    with the compiled step a request's tokens in the engine are its tokens alone by
    construction: the same tokens over 3 window slides, the same caches at the end."""
    from fractal_flood.manager.stream import ARStream

    m = model(16, 4, 32)
    prompt = torch.randint(0, 512, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len))
    sampling = SamplingConfig(0.9)
    stream = ARStream(m, 1, sampling, "cpu", seed=7)
    stream.start(prompt)
    stream_caches = [(c.k[0].clone(), c.v[0].clone()) for c in m.kv_caches]
    slots = SlotManager(m, 3, "cpu")
    slots.add("other", [1, 2, 3], SamplingConfig(1.0), seed=1)
    slots.add("me", prompt.tolist(), sampling, seed=7)
    T = prompt_len - 1  # the prefilled positions
    for (sk, sv), k, v in zip(stream_caches, slots.k, slots.v):
        assert torch.equal(k[1, :, :T], sk[:, :T]) and torch.equal(v[1, :, :T], sv[:, :T])
    n = 100  # three window slides of a 32-slot context
    ours = stream.generate(n)[0]
    theirs = slots.generate(n)[1]
    assert torch.equal(ours, theirs)
    last = int(slots.pos[1])  # the row's slots 0 .. last - 1 hold what the stream's hold
    for c, k, v in zip(m.kv_caches, slots.k, slots.v):
        assert torch.equal(k[1, :, :last], c.k[0, :, :last]) and torch.equal(v[1, :, :last], c.v[0, :, :last])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_rows_leave_and_join_in_any_cache_dtype(dtype):
    """add and remove keep the rows packed (the last active row moves into the freed one),
    through numpy views where numpy holds the cache's dtype, through tensor ops where not
    (bfloat16): the moved row's cache, window, token, position and settings with it."""
    m = model(0, 4, 32)
    s = SlotManager(m, 4, "cpu", dtype=dtype)
    for i, prompt in enumerate(([1, 2, 3], [4, 5], [6, 7, 8, 9])):
        s.add(i, prompt, SamplingConfig(0.5 + i / 10, top_k=3 if i == 1 else None), seed=10 + i)
    s.generate(3)
    last = [t[2].clone() for t in (*s.k, *s.v, s.window, s.tok, s.pos, s.seeds, s.steps,
                                   s.rows.temperature, s.rows.top_k, s.rows.top_p)]
    s.remove(0)
    assert s.owner == [2, 1]
    moved = [t[0] for t in (*s.k, *s.v, s.window, s.tok, s.pos, s.seeds, s.steps,
                            s.rows.temperature, s.rows.top_k, s.rows.top_p)]
    assert all(torch.equal(a, b) for a, b in zip(moved, last))
    s.add(3, [11, 12], SamplingConfig(0.9), seed=3)
    assert s.owner == [2, 1, 3] and int(s.tok[2]) == 12 and int(s.pos[2]) == 1
    assert float(s.rows.temperature[2]) == torch.tensor(0.9, dtype=torch.float32).item()
    assert int(s.rows.top_k[2]) == 0 and float(s.rows.top_p[2]) == 1.0 and int(s.seeds[2]) == 3
    assert s.generate(2).shape == (3, 2)
