"""The slot KV cache: a row's numbers do not depend on which other requests share the step."""

import pytest
import torch

from fractal_flood.causal_lm import CausalLM
from fractal_flood.config import CausalLMConfig
from fractal_flood.sampling import SamplingConfig
from fractal_flood.slots import MIN_ROWS, SlotManager


def model(classes=0):
    torch.manual_seed(0)
    return CausalLM(CausalLMConfig(vocab_size=512, n_layers=2, d_model=64, n_heads=4, context=32,
                                   head_classes=classes)).eval()


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("classes", [0, 16], ids=["softmax", "classes"])
@pytest.mark.parametrize("others", [0, 1, 2, 5, 11])
def test_a_rows_logits_are_bitwise_the_same_alone_or_batched(others, classes, threads):
    """The premise of 'every request's text equals its solo run' without luck: the step
    pads to MIN_ROWS rows, the size from which a CPU linear layer's rows are independent,
    and attention is batched matmuls (the fused kernel is not invariant on 2 threads)."""
    m = model(classes)
    prompt = [5, 9, 2, 7, 7, 1]
    alone = SlotManager(m, 1, "cpu")
    alone.add("me", prompt, SamplingConfig(0.9), seed=3)
    together = SlotManager(m, others + 1, "cpu")
    g = torch.Generator().manual_seed(others)
    for i in range(others):  # other requests at other positions, before and after ours
        if i == others // 2:
            together.add("me", prompt, SamplingConfig(0.9), seed=3)
        together.add(i, torch.randint(0, 512, (1 + i,), generator=g).tolist(), SamplingConfig(1.0), seed=i)
    if "me" not in together.owner:
        together.add("me", prompt, SamplingConfig(0.9), seed=3)
    row = together.owner.index("me")
    seen = {"alone": [], "together": []}

    def recording(name, inner, r):
        def step_hidden(A):
            hidden = inner(A)
            seen[name].append(hidden[r].clone())
            return hidden
        return step_hidden

    alone.step_hidden = recording("alone", alone.step_hidden, 0)
    together.step_hidden = recording("together", together.step_hidden, row)
    a, b = alone.generate(40)[0], together.generate(40)[row]  # past the context: slides included
    assert torch.equal(a, b)
    assert len(seen["alone"]) == len(seen["together"]) == 40
    for x, y in zip(seen["alone"], seen["together"]):
        assert torch.equal(x, y)


def test_fewer_slots_than_min_rows_still_pad():
    m = model()
    s = SlotManager(m, 1, "cpu")
    assert s.k[0].shape[0] == MIN_ROWS and s.slots == 1 and s.free == 1
    s.add("a", [1, 2], SamplingConfig(), seed=0)
    assert s.free == 0
    with pytest.raises(RuntimeError, match="no free slot"):
        s.add("b", [1], SamplingConfig(), seed=0)
