"""The manager's sampler: the inversion draw and the skipped filter sort.

(Distribution, top-k/top-p and per-row tests live beside the model in test_causal_lm.py.)
"""

import torch

from fractal_flood.causal_lm import CausalLM
from fractal_flood.config import CausalLMConfig
from fractal_flood.sampling import (RowSampling, SamplingConfig, filter_logits, inverse_cdf,
                                    sample, scaled_logits)
from fractal_flood.slots import SlotManager


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
    top = 1.0 - 2.0 ** -25  # the largest uniform row_uniform makes
    u = torch.tensor([2.0 ** -25, 0.1, 0.25, 0.2500001, 0.9, top])
    got = inverse_cdf(probs, u)
    assert got.tolist() == [1, 1, 3, 3, 3, 3]
    # unnormalised rows and a one-hot row
    assert inverse_cdf(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([top])).tolist() == [2]
    assert inverse_cdf(torch.tensor([[2.0, 2.0]]), torch.tensor([0.49])).tolist() == [0]
    assert inverse_cdf(torch.tensor([[2.0, 2.0]]), torch.tensor([0.51])).tolist() == [1]


def test_inverse_cdf_matches_the_distribution_over_a_large_vocabulary():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(1, 16384, generator=g).mul(2).softmax(-1)
    u = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000  # a fine grid of uniforms
    got = inverse_cdf(probs.expand(200000, -1), u.float())
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
