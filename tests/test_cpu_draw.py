"""The compiled step's output layer and draw (``cpu_draw.c``, one C call with the layers)
against the Python draw (``CausalLM.draw``): the uniform, the softmax and its running sum
bit for bit, so the same ids (on x86 CPUs, where the C softmax is PyTorch's kernel's; elsewhere
the same except where a target falls within the last bits of a slice's edge); a row's ids
the same alone or in any batch; the stream and the slot cache take it."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fractal_flood.errors import SettingError
from fractal_flood.manager import cpu_step
from fractal_flood.manager.slots import SlotManager
from fractal_flood.manager.stream import ARStream
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import RowSampling, SamplingConfig, row_uniform

pytestmark = pytest.mark.skipif(cpu_step.library() is None, reason="no C compiler built the step")

EDGE = 1e-5  # a target this close (relative to the total) to a slice's edge may land either side
# where cpu_draw.c's softmax is PyTorch's kernel, operation for operation (cpu_step.softmax_kernel)
EXACT = (platform.machine().lower() in ("x86_64", "amd64")
         and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2", "DEFAULT"))


def model(classes=16, vocab=512, width=64, context=32, seed=0):
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=vocab, n_layers=2, d_model=width, n_heads=4,
                                   context=context, head_classes=classes)).eval()


def compiled(m, rows=1):
    m.setup_cache(rows)
    return cpu_step.CpuStep(m, [c.k for c in m.kv_caches], [c.v for c in m.kv_caches])


def unfiltered(temperature):
    B = temperature.numel()
    return RowSampling(temperature, torch.zeros(B, dtype=torch.long), torch.ones(B), filters=False)


def python_draw(m, h, seeds, steps, temperature, chunk=32):
    """CausalLM.draw in chunks of ``chunk`` rows (<= 32: the host inversion; more: tensor ops)."""
    return torch.cat([m.draw(h[i:i + chunk], unfiltered(temperature[i:i + chunk]), seeds[i:i + chunk],
                             steps[i:i + chunk]) for i in range(0, h.size(0), chunk)])


def edge_distance(scores, temperature, u):
    """(B, n) scores, (B,) divisors, (B,) uniforms -> ((B,) distance of each target to its
    nearest cdf entry over the total, (B,) the index it picks, (B, n) probabilities)."""
    p = (scores / temperature[:, None]).softmax(-1)
    cdf = p.cumsum(-1)
    total = cdf[:, -1:]
    target = u[:, None] * total
    return ((cdf - target).abs() / total).min(-1).values, (cdf <= target).sum(-1), p, cdf, target


def near_an_edge(m, h, temperature, u):
    """Rows whose Python draw has a target within EDGE of a slice's edge (either inversion)."""
    with torch.no_grad():
        if m.class_head is None:
            return edge_distance(h @ m.lm_head.weight.t(), temperature, u)[0] < EDGE
        K = m.class_head.weight.size(0)
        S = m.lm_head.weight.size(0) // K
        dist, c, p, cdf, target = edge_distance(h @ m.class_head.weight.t(), temperature, u)
        c = c.clamp(max=K - 1)
        b = torch.arange(h.size(0))
        pc = p[b, c]
        inner = ((target[:, 0] - (cdf[b, c] - pc)) / pc).clamp(0, 1)
        block = m.lm_head.weight.view(K, S, -1)[c]  # (B, S, C)
        dist2 = edge_distance(torch.bmm(block, h[:, :, None])[:, :, 0], temperature, inner)[0]
        return (dist < EDGE) | (dist2 < EDGE / pc)


def test_the_uniform_is_row_uniform_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    seeds = torch.cat([torch.tensor([0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1]),
                       torch.randint(0, 2 ** 62, (2000,), generator=g)])
    steps = torch.cat([torch.tensor([0, 2 ** 40, 5, 2 ** 32 + 3, 7]),
                       torch.randint(0, 2 ** 40, (2000,), generator=g)])
    assert torch.equal(cpu_step.row_uniforms(seeds, steps), row_uniform(seeds, steps))
    for i in range(0, seeds.numel(), 64):  # the host path (<= 64 rows) and the tensor path alike
        assert torch.equal(cpu_step.row_uniforms(seeds[i:i + 64], steps[i:i + 64]),
                           row_uniform(seeds[i:i + 64], steps[i:i + 64]))


@pytest.mark.parametrize("classes", [0, 16, 32], ids=lambda k: f"classes{k}")
@pytest.mark.parametrize("temp", [0.0, 0.8, 1.3, "mixed"])
@torch.no_grad()
def test_the_c_draw_is_the_python_draw(classes, temp):
    """2,000 rows of random hidden states: greedy rows give the Python draw's ids exactly,
    sampled rows too except where a target lies within EDGE of a slice's edge (none here)."""
    m = model(classes)
    step = compiled(m)
    g = torch.Generator().manual_seed(classes)
    B = 2000
    h = torch.randn(B, 64, generator=g) * 2
    seeds = torch.randint(0, 2 ** 62, (B,), generator=g)
    steps = torch.randint(0, 10 ** 6, (B,), generator=g)
    if temp == "mixed":
        temperature = torch.tensor([0.0, 0.5, 0.8, 1.0, 1.3])[torch.randint(0, 5, (B,), generator=g)]
    else:
        temperature = torch.full((B,), temp)
    ids = step.draw(h, seeds, steps, temperature)
    for chunk in (1, 32, 64):  # the host inversion, and the tensor ops above 32 rows
        ref = python_draw(m, h, seeds, steps, temperature, chunk)
        if EXACT:
            assert torch.equal(ids, ref)
            continue
        differ = ids != ref
        greedy = temperature == 0
        assert not differ[greedy].any()
        allowed = near_an_edge(m, h, torch.where(greedy, torch.ones_like(temperature), temperature),
                               row_uniform(seeds, steps))
        assert not (differ & ~allowed).any()
        assert int(differ.sum()) <= 2


SOFTMAX_CHECK = """
import torch
from fractal_flood.manager import cpu_step
g = torch.Generator().manual_seed(0)
for n in (1, 5, 8, 15, 16, 17, 33, 128, 1000, 1024, 16384):
    z = torch.randn(16, n, generator=g) * 4
    z[0, : n // 2] = float("-inf") if n > 1 else 0.0  # filtered entries
    z[1] = -200 + torch.randn(n, generator=g)  # exponentials into the subnormals
    d = torch.rand(16, generator=g) + 0.3
    p, cdf = cpu_step.softmax_cdf(z, d)
    want = (z / d[:, None]).softmax(-1)
    assert torch.equal(p, want), n
    assert torch.equal(cdf, want.cumsum(-1)), n
print(torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.skipif(not EXACT, reason="the C softmax is PyTorch's kernel on x86 CPUs only")
def test_the_softmax_and_its_running_sum_are_pytorchs_bit_for_bit():
    """Under this CPU's kernel and the lower x86 ones PyTorch can be capped to
    (``ATEN_CPU_CAPABILITY``: AVX2's 8 lanes, the generic kernel's libm exp)."""
    exec(SOFTMAX_CHECK, {})
    caps = {"AVX512": ["avx2", "default"], "AVX2": ["default"], "DEFAULT": []}
    src = str(Path(cpu_step.__file__).parents[2])
    for cap in caps[torch.backends.cpu.get_cpu_capability()]:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, PYTHONPATH=src)
        done = subprocess.run([sys.executable, "-c", SOFTMAX_CHECK], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == cap.upper()


@pytest.mark.parametrize("classes", [0, 16])
@torch.no_grad()
def test_greedy_ties_take_the_first_highest_score(classes):
    m = model(classes)
    step = compiled(m)
    h = torch.zeros(3, 64)  # every score 0: the first class, its first token
    zero = torch.zeros(3)
    seeds = torch.arange(3)
    assert step.draw(h, seeds, seeds, zero).tolist() == [0, 0, 0]
    assert python_draw(m, h, seeds, seeds, zero).tolist() == [0, 0, 0]
    # two classes, and two tokens in the chosen class, with the same best score: the lower ids
    saved = [p.clone() for p in m.parameters()]
    m.lm_head.weight.zero_()
    if classes:
        m.class_head.weight.zero_()
        m.class_head.weight[9] = m.class_head.weight[5] = 1.0
        m.lm_head.weight[5 * 32 + 20] = m.lm_head.weight[5 * 32 + 7] = 1.0
    else:
        m.lm_head.weight[300] = m.lm_head.weight[7] = 1.0
    h = torch.ones(3, 64)
    got = step.draw(h, seeds, seeds, zero)
    assert torch.equal(got, python_draw(m, h, seeds, seeds, zero))
    assert got.tolist() == [5 * 32 + 7 if classes else 7] * 3
    for p, p0 in zip(m.parameters(), saved):
        p.copy_(p0)


@pytest.mark.parametrize("classes", [0, 16])
@torch.no_grad()
def test_a_rows_ids_are_the_same_alone_or_in_any_batch(classes):
    """One C call for the step and the draw: each row's hidden state and id are bitwise the
    same alone or among 1-33 rows, at its own position, seed, step and temperature."""
    m = model(classes)
    S = 33
    m.setup_cache(S)
    g = torch.Generator().manual_seed(1)
    m.hidden_cached(torch.randint(0, 512, (S, 31), generator=g), torch.arange(31))
    k, v = [c.k for c in m.kv_caches], [c.v for c in m.kv_caches]
    step = cpu_step.CpuStep(m, k, v)
    tok = torch.randint(0, 512, (S,), generator=g)
    pos = torch.randint(0, 31, (S,), generator=g)
    seeds = torch.randint(0, 2 ** 62, (S,), generator=g)
    steps = torch.randint(0, 1000, (S,), generator=g)
    temperature = torch.tensor([0.0, 0.8, 1.3])[torch.arange(S) % 3]
    saved = [(a.clone(), b.clone()) for a, b in zip(k, v)]
    ids, hidden = step.step(tok, pos, seeds, steps, temperature)
    assert torch.equal(ids, step.draw(hidden, seeds, steps, temperature))
    for rows in range(1, S + 1):
        for start in {0, (S - rows) // 2, S - rows}:
            for (a, b), (a0, b0) in zip(zip(k, v), saved):
                a.copy_(a0), b.copy_(b0)
            part = slice(start, start + rows)
            got, h = step.step(tok[part], pos[part], seeds[part], steps[part], temperature[part], row0=start)
            assert torch.equal(h, hidden[part]), (rows, start)
            assert torch.equal(got, ids[part]), (rows, start)


@torch.no_grad()
def test_ids_may_overwrite_the_pending_tokens():
    m = model()
    step = compiled(m, 2)
    tok = torch.tensor([4, 9])
    args = (torch.tensor([0, 0]), torch.tensor([3, 4]), torch.tensor([0, 0]), torch.tensor([0.9, 0.0]))
    want, _ = step.step(tok.clone(), *args)
    step2 = compiled(model(), 2)
    got, _ = step2.step(tok, *args, ids=tok)
    assert got.data_ptr() == tok.data_ptr() and torch.equal(tok, want)
    with pytest.raises(ValueError, match="ids"):
        step2.step(tok, *args, ids=torch.empty(3, dtype=torch.long))


def test_the_switch(monkeypatch):
    m = model()
    m.setup_cache(1)
    for value, draws in (("native", True), ("step", True), ("body", False)):
        monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", value)
        assert cpu_step.usable(m, "cpu", torch.float32)
        assert ARStream(m, 1, SamplingConfig(0.8), "cpu")._native.draws is draws
        assert SlotManager(m, 2, "cpu")._native.draws is draws
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "eager")
    assert ARStream(m, 1, SamplingConfig(0.8), "cpu")._native is None
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "draw")
    with pytest.raises(SettingError, match="FRACTAL_FLOOD_CPU_STEP='draw': choose from native, step, body, eager"):
        cpu_step.mode()


@pytest.fixture(scope="module")
def shipped():
    from fractal_flood.models import checkpoint as ckpt

    return ckpt.load_model_dir(None, "cpu", torch.float32, optional=("peer",))


def _stream_tokens(m, sampling, seed, runtime, monkeypatch, n=520):
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", runtime)
    stream = ARStream(m, 1, SamplingConfig(**sampling), "cpu", seed=seed)
    assert stream._native.draws is (runtime == "native")
    calls = []
    inner = m.draw
    m.draw = lambda *a: calls.append(1) or inner(*a)
    try:
        stream.start(torch.tensor([1, 2, 3]))
        out = stream.generate(n)[0]
    finally:
        del m.draw
    assert bool(calls) is (runtime == "body" or bool(sampling.get("top_k")))
    return out


@pytest.mark.parametrize("part", ["manager", "peer"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.8), dict(temperature=1.3)],
                         ids=str)
def test_the_shipped_models_draw_the_python_draws_ids_over_520_steps(shipped, part, sampling, monkeypatch):
    """The shipped manager (128 classes of 128 roots) and AR peer (1,024 chunks), 520 steps
    (two window slides): the one-call step writes the tokens of the same compiled layers
    followed by the Python draw."""
    m = getattr(shipped, part)
    a = _stream_tokens(m, sampling, 5, "native", monkeypatch)
    b = _stream_tokens(m, sampling, 5, "body", monkeypatch)
    assert torch.equal(a, b)


def test_a_top_k_stream_keeps_the_python_draw(shipped, monkeypatch):
    sampling = dict(temperature=0.8, top_k=40)
    a = _stream_tokens(shipped.manager, sampling, 5, "native", monkeypatch, n=64)
    assert torch.equal(a, _stream_tokens(shipped.manager, sampling, 5, "body", monkeypatch, n=64))


@torch.no_grad()
def test_the_slot_cache_draws_in_c_and_a_request_alone_equals_among_31_others(shipped, monkeypatch):
    """The engine's slot cache: every unfiltered row drawn by the one C call (the Python draw
    runs only for the top-k / top-p rows, only over them); three requests (temperatures 0.8,
    0 and 1.3) write alone the roots they write among 31 others at other temperatures,
    greedy and filtered ones included, across a window slide, and the Python draw's
    (``body``) roots."""
    m = shipped.manager
    g = torch.Generator().manual_seed(3)
    mine = torch.randint(1, 16384, (240,), generator=g).tolist()  # slides within the 40 steps
    ours = {"warm": SamplingConfig(0.8), "greedy": SamplingConfig(0.0), "hot": SamplingConfig(1.3)}
    settings = [SamplingConfig(0.0), SamplingConfig(0.8), SamplingConfig(1.3), SamplingConfig(1.0),
                SamplingConfig(0.7)]
    filtered = {5: SamplingConfig(0.9, top_k=50), 20: SamplingConfig(1.1, top_p=0.9)}
    drawn_rows = []
    inner = m.draw
    m.draw = lambda h, *a: drawn_rows.append(h.size(0)) or inner(h, *a)
    try:
        alone = {}
        for name, sampling in ours.items():
            one = SlotManager(m, 1, "cpu")
            assert one._native.draws
            one.add(name, mine, sampling, seed=77)
            alone[name] = one.generate(40)[0]
        assert not drawn_rows
        together = SlotManager(m, 32, "cpu")
        names = iter(ours.items())
        for i in range(29):
            if i in (0, 13, 28):
                name, sampling = next(names)
                together.add(name, mine, sampling, seed=77)
            prompt = torch.randint(1, 16384, (1 + 3 * i,), generator=g).tolist()
            together.add(i, prompt, filtered.get(i, settings[i % len(settings)]), seed=i)
        out = together.generate(40)
        assert drawn_rows == [2] * 40  # the top-k and top-p rows only
        for name in ours:
            assert torch.equal(out[together.owner.index(name)], alone[name]), name
        monkeypatch.setenv("FRACTAL_FLOOD_CPU_STEP", "body")
        for name, sampling in ours.items():
            one = SlotManager(m, 1, "cpu")
            one.add(name, mine, sampling, seed=77)
            assert torch.equal(one.generate(40)[0], alone[name]), name
    finally:
        del m.draw
