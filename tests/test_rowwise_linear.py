"""The row-invariant linear layer of the CPU decode steps: the compiled kernel equals its
scalar fmaf sequence bit for bit, every row is the same alone or in any batch, under
every instruction-set cap the CPU libraries honour, and the slot cache's rows with it."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from fractal_flood.models import rowwise_linear

SHAPES = [(64, 192), (64, 256), (256, 64), (128, 384), (512, 128), (100, 37), (3, 1)]


@pytest.fixture
def kernel():
    if rowwise_linear.library() is None:
        pytest.skip("no C compiler built the kernel (the 'rows' fallback is tested below)")


@pytest.mark.parametrize("K,N", SHAPES)
def test_kernel_is_its_reference_bit_for_bit(kernel, K, N):
    g = torch.Generator().manual_seed(K * N)
    x, w, b = torch.randn(33, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    y = rowwise_linear.linear(x, w, b)
    assert torch.equal(y, rowwise_linear.reference_linear(x, w, b))
    assert torch.equal(rowwise_linear.linear(x, w), rowwise_linear.reference_linear(x, w))
    # the same product as the library's, up to summation order
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


def _mul_then_add(x, w, b):
    """The product with each multiply and add rounded on its own (tensor ops, k in order)."""
    acc = b.expand(x.size(0), -1).clone() if b is not None else torch.zeros(x.size(0), w.size(0))
    for k in range(x.size(1)):
        acc = acc + x[:, k:k + 1] * w.t()[k]
    return acc


@pytest.mark.parametrize("K,N", SHAPES)
def test_the_kernel_takes_one_fmaf_a_product_row_by_row(kernel, K, N):
    """Every row by the scalar fmaf sequence (``rowwise_linear_scalar``), tiled or not, the
    one-row tile included; every row the same alone; one rounding a product, not the
    separate multiply and add's two."""
    g = torch.Generator().manual_seed(K + N)
    x, w, b = torch.randn(33, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    y = rowwise_linear.linear(x, w, b)
    alone = torch.cat([rowwise_linear.linear(x[i:i + 1], w, b) for i in range(x.size(0))])
    assert torch.equal(y, alone)
    if K > 4:
        assert not torch.equal(y, _mul_then_add(x, w, b))


@pytest.mark.parametrize("how", ["kernel", "rows"])
@pytest.mark.parametrize("K,N", SHAPES)
def test_a_row_is_the_same_in_any_batch(how, K, N, monkeypatch):
    if how == "kernel" and rowwise_linear.library() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("FRACTAL_FLOOD_ROWWISE", how)
    g = torch.Generator().manual_seed(K + N)
    x, w, b = torch.randn(33, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    full = rowwise_linear.linear(x, w, b)
    for M in range(1, 34):
        for start in (0, 33 - M):
            assert torch.equal(rowwise_linear.linear(x[start:start + M], w, b), full[start:start + M]), (M, start)


def test_gathered_is_each_rows_block(kernel):
    g = torch.Generator().manual_seed(1)
    blocks, S, K = 16, 8, 32
    x, w = torch.randn(20, K, generator=g), torch.randn(blocks * S, K, generator=g)
    index = torch.randint(0, blocks, (20,), generator=g)
    y = rowwise_linear.gathered(x, w, blocks, index)
    for m in range(20):
        ref = rowwise_linear.reference_linear(x[m:m + 1], w.view(blocks, S, K)[index[m]])[0]
        assert torch.equal(y[m], ref)
        assert torch.equal(rowwise_linear.gathered(x[m:m + 1], w, blocks, index[m:m + 1])[0], y[m])


def test_other_devices_dtypes_and_gradients_take_the_library(monkeypatch):
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(3, 4)
    y = rowwise_linear.linear(x, w)
    assert y.requires_grad  # training keeps autograd: F.linear
    with torch.no_grad():
        xb, wb = x.bfloat16(), w.detach().bfloat16()
        assert torch.equal(rowwise_linear.linear(xb, wb), F.linear(xb, wb))
    monkeypatch.setenv("FRACTAL_FLOOD_ROWWISE", "blas")
    with torch.no_grad():
        assert torch.equal(rowwise_linear.linear(x, w), F.linear(x, w))


def test_a_changed_weight_is_transposed_again(kernel):
    w, x = torch.randn(8, 4), torch.randn(2, 4)
    before = rowwise_linear.linear(x, w)
    w.mul_(2)  # in place: an optimizer step, a load_state_dict
    assert torch.equal(rowwise_linear.linear(x, w), rowwise_linear.reference_linear(x, w))
    assert not torch.equal(before, rowwise_linear.linear(x, w))


def test_unknown_mode_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("FRACTAL_FLOOD_ROWWISE", "fast")
    with pytest.raises(ValueError, match="FRACTAL_FLOOD_ROWWISE='fast'"):
        rowwise_linear.mode()


# Every row count 1-33 through the slot cache (what the server batches), in a fresh process
# under each instruction-set cap: PyTorch's own kernels (ATEN_CPU_CAPABILITY), oneDNN's
# (ONEDNN_MAX_CPU_ISA) and MKL's (MKL_ENABLE_INSTRUCTIONS).
CAPS = {
    "as-is": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
}

ROW_COUNTS = textwrap.dedent("""
    import sys, torch
    from fractal_flood.models.causal_lm import CausalLM
    from fractal_flood.models.config import CausalLMConfig
    from fractal_flood.sampling.tokens import SamplingConfig
    from fractal_flood.manager.slots import SlotManager
    torch.set_num_threads(int(sys.argv[1]))

    def run(m, rows, prompt):
        # 'me' among rows - 1 others (other lengths, temperatures, some top-k): its tokens and
        # its final hidden state at every step, bit for bit
        s = SlotManager(m, rows, "cpu")
        g = torch.Generator().manual_seed(rows)
        for i in range(rows - 1):
            if i == (rows - 1) // 2:
                s.add("me", prompt, SamplingConfig(0.9), seed=3)
            ids = torch.randint(0, 512, (1 + 3 * i,), generator=g).tolist()
            s.add(i, ids, SamplingConfig(1.0 if i % 3 else 0.7, top_k=50 if i % 5 == 0 else None), seed=i)
        if "me" not in s.owner:
            s.add("me", prompt, SamplingConfig(0.9), seed=3)
        r, seen, inner = s.owner.index("me"), [], s.step_rows
        def step_rows(A, out):
            ids, h = inner(A, out)
            seen.append(h[r].clone())
            return ids, h
        s.step_rows = step_rows
        return s.generate(24)[r], torch.stack(seen)  # past the context: window slides included

    bad = []
    for classes, heads in ((0, 4), (16, 2)):
        torch.manual_seed(0)
        m = CausalLM(CausalLMConfig(vocab_size=512, n_layers=2, d_model=64, n_heads=heads, context=16,
                                    head_classes=classes)).eval()
        tokens, hidden = run(m, 1, [5, 9, 2, 7, 7, 1])
        for rows in range(2, 34):
            t, h = run(m, rows, [5, 9, 2, 7, 7, 1])
            if not (torch.equal(t, tokens) and torch.equal(h, hidden)):
                bad.append((classes, rows))
    print("differs at", bad)
    sys.exit(1 if bad else 0)
""")


@pytest.mark.slow
@pytest.mark.parametrize("cap,threads", [("as-is", 1), *((cap, 2) for cap in CAPS)])
def test_slot_rows_are_batch_invariant_under_isa_caps(cap, threads):
    env = {**os.environ, **CAPS[cap]}
    done = subprocess.run([sys.executable, "-c", ROW_COUNTS, str(threads)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
