"""Reduced-precision layer weights for the compiled CPU step (``models/weight_formats.py``):
the bf16 and int8 kernels are the float32 kernel over the dequantised weights bit for bit,
so the step with a stored format is the float32 step over a dequantised copy of the model
bit for bit (the copy whose held-out bits per character ``scripts/weight_formats.py``
reports); the switch is checked."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fractal_flood.errors import SettingError
from fractal_flood.manager import cpu_step
from fractal_flood.manager.stream import ARStream
from fractal_flood.models import rowwise_linear, weight_formats
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import SamplingConfig

pytestmark = pytest.mark.skipif(cpu_step.library() is None, reason="no C compiler built the step")

REDUCED = ["bf16", "int8"]


def model(classes=16, width=64, heads=4, seed=0):
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=512, n_layers=2, d_model=width, n_heads=heads, context=32,
                                   head_classes=classes)).eval()


@pytest.mark.parametrize("fmt", REDUCED)
@pytest.mark.parametrize("shape", [(384, 128), (64, 256), (70, 33), (167, 40)])
def test_the_kernel_is_the_float32_kernel_over_the_dequantised_weights(fmt, shape):
    g = torch.Generator().manual_seed(shape[0])
    w, b = torch.randn(*shape, generator=g), torch.randn(shape[0], generator=g)
    wt, scale = weight_formats.stored(w, fmt)
    assert wt.dtype == {"bf16": torch.bfloat16, "int8": torch.int8}[fmt] and wt.shape == (shape[1], shape[0])
    deq = weight_formats.dequantized(w, fmt)
    x = torch.randn(9, shape[1], generator=g)
    for bias in (None, b):
        full = rowwise_linear.stored_linear(x, wt, scale, bias)
        assert torch.equal(full, rowwise_linear.linear(x, deq, bias))
        for rows in (1, 2, 3, 4, 5):  # each row alone, as in any batch (bf16: 1-3 rows take the one-row
            # tile of 128 outputs, then of 32, then the partial one; 167 outputs take all three)
            assert torch.equal(rowwise_linear.stored_linear(x[:rows], wt, scale, bias), full[:rows])


def test_int8_scales_and_rounding():
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.49, 0.25], [-3.0, 1.0, 0.0]])
    wt, scale = weight_formats.stored(w, "int8")
    assert scale.tolist() == pytest.approx([1.0, 1 / 127, 3 / 127])
    assert wt.t().tolist() == [[0, 0, 0], [127, -62, 32], [-127, 42, 0]]
    deq = weight_formats.dequantized(w, "int8")
    assert (deq - w).abs().le(scale[:, None] / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="unknown weight format 'fp16'"):
        weight_formats.stored(w, "fp16")


@pytest.mark.parametrize("fmt", REDUCED)
@pytest.mark.parametrize("classes", [0, 16])
@torch.no_grad()
def test_the_step_is_the_float32_step_over_the_dequantised_model(fmt, classes):
    """Hidden states, cache and drawn ids, 24 steps of 3 rows at their own positions and
    temperatures, from empty caches: bit for bit. (A prompt's prefill is these steps'
    operations over its positions, ``CpuStep.prefill``: tests/test_cpu_step.py.)"""
    m = model(classes)
    deq = weight_formats.dequantized_model(m, fmt)
    for x in (m, deq):
        x.setup_cache(3)
    ours = cpu_step.CpuStep(m, [c.k for c in m.kv_caches], [c.v for c in m.kv_caches], weights=fmt)
    ref = cpu_step.CpuStep(deq, [c.k for c in deq.kv_caches], [c.v for c in deq.kv_caches], weights="fp32")
    assert ours.weights == fmt and ref.weights == "fp32"
    tok, seeds, temp = torch.tensor([5, 9, 2]), torch.tensor([1, 2, 3]), torch.tensor([0.8, 0.0, 1.3])
    for t in range(24):
        pos, steps = torch.tensor([t, t // 2, min(t, 5)]), torch.full((3,), t)
        a, ha = ours.step(tok, pos, seeds, steps, temp)
        b, hb = ref.step(tok, pos, seeds, steps, temp)
        assert torch.equal(ha, hb) and torch.equal(a, b), t
        tok = a.clone()
    for c, d in zip(m.kv_caches, deq.kv_caches):
        assert torch.equal(c.k, d.k) and torch.equal(c.v, d.v)
    # and the reduced step is not the float32 one: the formats do change the numbers
    full = cpu_step.CpuStep(m, [c.k for c in m.kv_caches], [c.v for c in m.kv_caches], weights="fp32")
    assert not torch.equal(full.hidden(tok, torch.tensor([30, 30, 30])), ours.hidden(tok, torch.tensor([30, 30, 30])))


@torch.no_grad()
def test_weights_changed_in_place_are_stored_again():
    m = model()
    m.setup_cache(1)
    step = cpu_step.CpuStep(m, [c.k for c in m.kv_caches], [c.v for c in m.kv_caches], weights="int8")
    before = step.hidden(torch.tensor([3]), torch.tensor([0]))
    m.blocks[0].mlp.c_fc.weight.mul_(1.5)
    after = step.hidden(torch.tensor([3]), torch.tensor([0]))
    deq = weight_formats.dequantized_model(m, "int8")
    deq.setup_cache(1)
    want = cpu_step.CpuStep(deq, [c.k for c in deq.kv_caches], [c.v for c in deq.kv_caches],
                            weights="fp32").hidden(torch.tensor([3]), torch.tensor([0]))
    assert torch.equal(after, want) and not torch.equal(before, after)


def test_the_switch(monkeypatch):
    m = model()
    monkeypatch.delenv("FRACTAL_FLOOD_CPU_WEIGHTS", raising=False)  # (the suite runs fp32: conftest.py)
    assert cpu_step.DEFAULT_WEIGHTS == "bf16"
    assert ARStream(m, 1, SamplingConfig(0.8), "cpu")._native.weights == "bf16"
    for fmt in weight_formats.FORMATS:
        monkeypatch.setenv("FRACTAL_FLOOD_CPU_WEIGHTS", fmt)
        assert ARStream(m, 1, SamplingConfig(0.8), "cpu")._native.weights == fmt
    monkeypatch.setenv("FRACTAL_FLOOD_CPU_WEIGHTS", "fp16")
    with pytest.raises(SettingError, match="FRACTAL_FLOOD_CPU_WEIGHTS='fp16': choose from fp32, bf16, int8, w8a8"):
        cpu_step.weights_format()


@pytest.mark.parametrize("fmt", [None, "w8a8"])
@torch.no_grad()
def test_under_the_default_a_request_alone_equals_it_among_others(monkeypatch, fmt):
    """The default (bf16) slot cache, and w8a8's: a request's tokens alone equal its tokens
    among 11 others at other positions and temperatures (one top-k), through window slides,
    and a batch-1 stream's."""
    from fractal_flood.manager.slots import SlotManager

    if fmt is None:
        monkeypatch.delenv("FRACTAL_FLOOD_CPU_WEIGHTS", raising=False)
    else:
        monkeypatch.setenv("FRACTAL_FLOOD_CPU_WEIGHTS", fmt)
    m = model()
    prompt = [5, 9, 2, 7, 7, 1]
    for sampling in (SamplingConfig(0.9), SamplingConfig(0.0)):
        alone = SlotManager(m, 1, "cpu")
        assert alone._native.weights == (fmt or cpu_step.DEFAULT_WEIGHTS)
        alone.add("me", prompt, sampling, seed=3)
        together = SlotManager(m, 12, "cpu")
        g = torch.Generator().manual_seed(1)
        for i in range(11):
            if i == 6:
                together.add("me", prompt, sampling, seed=3)
            other = SamplingConfig(0.7, top_k=5) if i == 2 else SamplingConfig(0.3 * (i % 5))
            together.add(i, torch.randint(0, 512, (1 + 2 * i,), generator=g).tolist(), other, seed=i)
        a = alone.generate(80)[0]
        assert torch.equal(a, together.generate(80)[together.owner.index("me")])
        stream = ARStream(m, 1, sampling, "cpu", seed=3)
        stream.start(torch.tensor(prompt))
        assert torch.equal(stream.generate(80)[0], a)


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "weight_formats.py"


@pytest.mark.usefixtures("single_thread")
def test_the_script_prints_bits_per_character_beside_tokens_per_second(tiny_model_dir, small_corpus_file):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--corpus",
                          str(small_corpus_file), "--rounds", "2", "--roots", "4", "--peer-tokens", "4",
                          "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for fmt in weight_formats.FORMATS:
        assert f"{fmt}: held-out bits/char manager " in text
    assert "round  2 (fp32 bf16 int8 w8a8)" in text and "e2e: median tokens/s fp32 " in text
    assert "  int8 / fp32: median" in text and "  w8a8 / fp32: median" in text


@pytest.mark.skipif(rowwise_linear.library() is None, reason="no C compiler")
def test_the_build_without_native_instructions_gives_the_same_bits(tmp_path):
    """The kernels built without -march=native (no AVX-512, no FMA instruction: the tiles'
    intrinsics are not compiled, GCC's loops run instead, and ``fmaf`` is the library's
    correctly rounded call) against this machine's build: the same bits, every format, one row
    and tiles of four."""
    import ctypes
    import os
    import shutil

    from fractal_flood import native

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    target = tmp_path / "portable.so"
    done = subprocess.run([cc, *native.FLAGS, "-o", str(target), str(rowwise_linear.SOURCE), "-lm"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(target))
    here = rowwise_linear.library()
    p = ctypes.c_void_p
    for M, K, N in [(1, 128, 384), (4, 512, 128), (7, 128, 512), (3, 33, 70), (2, 40, 167)]:
        g = torch.Generator().manual_seed(M * K)
        x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
        for fmt, name in (("int8", "rowwise_linear_int8"), ("bf16", "rowwise_linear_bf16")):
            wt, sc = weight_formats.stored(w, fmt)
            outs = []
            for library in (lib, here):
                y = torch.empty(M, N)
                getattr(library, name)(p(x.data_ptr()), p(wt.data_ptr()), p(sc.data_ptr() if sc is not None else 0),
                                       p(b.data_ptr()), p(y.data_ptr()), ctypes.c_int64(M), ctypes.c_int64(K),
                                       ctypes.c_int64(N))
                outs.append(y)
            assert torch.equal(outs[0], outs[1]), (fmt, M, K, N)
        wt = w.t().contiguous()  # float32: the same fmaf sequence, intrinsics or GCC's loops
        outs = []
        for library in (lib, here):
            y = torch.empty(M, N)
            library.rowwise_linear(p(x.data_ptr()), p(wt.data_ptr()), p(b.data_ptr()), p(y.data_ptr()),
                                   ctypes.c_int64(M), ctypes.c_int64(K), ctypes.c_int64(N))
            outs.append(y)
        assert torch.equal(outs[0], outs[1]), ("fp32", M, K, N)
