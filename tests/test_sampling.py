"""The manager's sampler: the inversion draw and the skipped filter sort.

(Distribution, top-k/top-p and per-row tests live beside the model in test_causal_lm.py.)
"""

import torch

from fractal_flood.manager.slots import SlotManager
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import (SEED_LIMIT, RowSampling, SamplingConfig, _row_uniform_host,
                                           _row_uniform_tensor, filter_logits, inverse_cdf, row_uniform,
                                           sample, scaled_logits)


def test_unfiltered_rows_skip_the_sort_and_give_the_same_tokens():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(256, 300, generator=g) * 2
    seeds, steps = torch.arange(256) * 7919, torch.arange(256) % 5
    configs = [SamplingConfig(temperature=t) for t in (0.0, 0.5, 0.8, 1.0, 1.7)] * 52
    configs = configs[:256]
    fast = RowSampling.of(configs)
    assert not fast.filters
    slow = RowSampling(fast.temperature, fast.top_k, fast.top_p, filters=True)
    assert torch.equal(scaled_logits(logits, fast), filter_logits(logits, slow))
    assert torch.equal(sample(logits, fast, seeds, steps), sample(logits, slow, seeds, steps))
    # one filtering row turns the flag on for the whole batch
    assert RowSampling.of(configs[:3] + [SamplingConfig(top_p=0.9)]).filters
    assert RowSampling.of([SamplingConfig(top_k=4)]).filters
    assert not RowSampling.of([SamplingConfig(top_p=1.0)]).filters


def test_inverse_cdf_never_draws_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0, 0.0]]).repeat(6, 1)
    top = 1.0  # the largest uniform row_uniform makes (once in 2**24 draws)
    u = torch.tensor([2.0 ** -25, 0.1, 0.25, 0.2500001, 1.0 - 2.0 ** -24, top])
    got = inverse_cdf(probs, u)
    assert got.tolist() == [1, 1, 3, 3, 3, 3]
    assert float(row_uniform(torch.tensor([0]), torch.tensor([0]))) < 1.0
    x = torch.tensor([2 ** 24 - 1])  # the top 24 bits, as row_uniform turns them into a float
    assert float((x.float() + 0.5) * (1.0 / (1 << 24))) == top
    # unnormalised rows and a one-hot row
    assert inverse_cdf(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([top])).tolist() == [2]
    assert inverse_cdf(torch.tensor([[2.0, 2.0]]), torch.tensor([0.49])).tolist() == [0]
    assert inverse_cdf(torch.tensor([[2.0, 2.0]]), torch.tensor([0.51])).tolist() == [1]


def test_inverse_cdf_matches_the_distribution_over_a_large_vocabulary():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(1, 16384, generator=g).mul(2).softmax(-1)
    u = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000  # a fine grid of uniforms
    # in blocks of 1,024 rows (0.13 GB each): the whole grid at once is a 13 GB cumulative sum
    got = torch.cat([inverse_cdf(probs.expand(part.numel(), -1), part.float()) for part in u.split(1024)])
    freq = torch.bincount(got, minlength=16384).double() / got.numel()
    assert (freq - probs[0].double()).abs().max() < 2e-4
    assert (got < 16384).all()


def test_slot_rows_track_whether_any_active_request_filters():
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(vocab_size=40, n_layers=1, d_model=16, n_heads=2,
                                    context=16)).eval()
    slots = SlotManager(model, 3, "cpu")
    slots.add("a", [1, 2], SamplingConfig(temperature=0.9), seed=1)
    assert not slots.rows.filters
    slots.add("b", [3], SamplingConfig(top_k=5), seed=2)
    assert slots.rows.filters
    slots.add("c", [4], SamplingConfig(), seed=3)
    slots.remove("a")  # "c" moves into row 0, "b" keeps filtering
    assert slots.rows.filters
    slots.remove("b")
    assert not slots.rows.filters
    out = slots.generate(3)  # the rows left still decode
    assert out.shape == (1, 3)


def test_the_cpu_uniforms_are_the_tensor_hash_bit_for_bit():
    """row_uniform's integer path (small CPU batches) against the tensor ops (the reference):
    random 63-bit seeds and steps, the edges of both halves, and strided views."""
    g = torch.Generator().manual_seed(5)
    edges = torch.tensor([0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 62, SEED_LIMIT - 1])
    seeds = torch.cat([torch.randint(0, 2 ** 62, (4000,), generator=g) * 2 + 1, edges, edges])
    steps = torch.cat([torch.randint(0, 2 ** 40, (4000,), generator=g), edges, edges.flip(0)])
    ref = _row_uniform_tensor(seeds, steps)
    got = _row_uniform_host(seeds, steps)
    assert got.dtype == ref.dtype == torch.float32 and torch.equal(got, ref)
    assert torch.equal(row_uniform(seeds[:64], steps[:64]), ref[:64])  # the CPU's small batches
    assert torch.equal(row_uniform(seeds, steps), ref)  # and big ones (the tensor ops)
    assert torch.equal(_row_uniform_host(seeds[::3], steps[1::3]), _row_uniform_tensor(seeds[::3], steps[1::3]))
    assert 0 < float(ref.min()) and float(ref.max()) < 1 and len(set(ref.tolist())) > 3990
