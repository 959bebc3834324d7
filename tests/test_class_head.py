"""The class-factored output layer: its table is a distribution, the factored draw equals the
whole-table reference draw, and every decoder of a CausalLM reads it alike."""

import pytest
import torch

from fractal_flood.manager.slots import SlotManager
from fractal_flood.manager.stream import ARStream, generate_reference
from fractal_flood.models import class_head
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig, auto_classes, check_classes
from fractal_flood.sampling.tokens import RowSampling, SamplingConfig

V, K, C = 48, 6, 16


def weights(seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(K, C, generator=g) * scale, torch.randn(V, C, generator=g) * scale)


def test_log_probs_are_the_product_of_the_two_softmaxes():
    wc, wt = weights()
    h = torch.randn(5, C)
    lp = class_head.class_log_probs(h @ wc.t(), h @ wt.t(), 0.7)
    assert lp.shape == (5, V)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(5), atol=1e-5, rtol=0)
    S = V // K
    for b in range(5):
        pc = (h[b] @ wc.t() / 0.7).softmax(-1)
        for t in (0, 7, S, V - 1):
            c = t // S
            pt = (h[b] @ wt[c * S:(c + 1) * S].t() / 0.7).softmax(-1)[t - c * S]
            torch.testing.assert_close(lp[b, t].exp(), pc[c] * pt, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temps", [[1.0], [0.5], [0.0], [1.3, 0.0, 0.8, 1.0]], ids=str)
def test_factored_draw_equals_the_whole_table_draw(temps):
    """One uniform per row, inverted twice (class, then token in the class), is the token
    whose slice of the whole distribution holds it: the same ids as the reference up to
    float rounding at a slice's edge (allowed for at most 1 in 500 draws)."""
    wc, wt = weights(1)
    B = 4000
    h = torch.randn(B, C, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(temps).repeat(B // len(temps))
    rows = RowSampling(t, torch.zeros(B, dtype=torch.long), torch.ones(B), filters=False)
    seeds, steps = torch.arange(B) * 7919, torch.arange(B) % 13
    fast = class_head.draw(h, wc, wt, rows, seeds, steps)
    ref = class_head.reference_draw(h, wc, wt, rows, seeds, steps)
    assert (fast != ref).sum() <= B // 500
    greedy = t == 0
    if greedy.any():  # no uniform in a greedy draw: exact
        assert torch.equal(fast[greedy], ref[greedy])
    assert len(set(fast.tolist())) > V // 2  # the draws spread over the vocabulary


def test_factored_draw_follows_its_distribution():
    """Many draws of one row at temperature 1 match P(class) P(token | class)."""
    wc, wt = weights(3, scale=0.5)
    N = 60000
    h = torch.randn(1, C, generator=torch.Generator().manual_seed(4)).expand(N, C)
    rows = RowSampling.of([SamplingConfig(1.0)] * N)
    ids = class_head.draw(h, wc, wt, rows, torch.full((N,), 11), torch.arange(N))
    p = class_head.class_log_probs(h[:1] @ wc.t(), h[:1] @ wt.t())[0].exp()
    freq = torch.bincount(ids, minlength=V).float() / N
    assert (freq - p).abs().max() < 0.01


def test_filtered_rows_take_the_reference_path():
    wc, wt = weights(5)
    B = 64
    h = torch.randn(B, C)
    rows = RowSampling.of([SamplingConfig(0.9, top_k=3)] * B)
    seeds, steps = torch.arange(B), torch.zeros(B, dtype=torch.long)
    got = class_head.draw(h, wc, wt, rows, seeds, steps)
    assert torch.equal(got, class_head.reference_draw(h, wc, wt, rows, seeds, steps))
    lp = class_head.class_log_probs(h @ wc.t(), h @ wt.t(), 0.9)
    top3 = lp.topk(3, -1).indices
    assert (top3 == got[:, None]).any(-1).all()  # top-k ranks tokens across classes


def test_class_counts():
    assert auto_classes(16384) == 128 and auto_classes(8192) == 64
    assert auto_classes(2048) == 0 and auto_classes(4099) == 0  # small, or prime
    check_classes(16384, 0)
    check_classes(16384, 128)
    for bad in (1, 3, 16384, -2, 2.0, True):
        with pytest.raises(ValueError, match="head_classes"):
            check_classes(16384, bad)
    with pytest.raises(ValueError, match="head_classes"):
        CausalLMConfig(vocab_size=100, head_classes=7)


CTX = 16


def factored(seed=0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(CausalLMConfig(vocab_size=V, n_layers=2, d_model=32, n_heads=4, context=CTX,
                                    head_classes=K))
    with torch.no_grad():  # sharper scores than at init, so sampling is not near-uniform
        model.wte.weight.mul_(20)
        model.class_head.weight.mul_(20)
    return model.eval()


def test_model_scores_are_log_probabilities_and_train():
    model = factored()
    idx = torch.randint(0, V, (3, 10))
    out = model(idx)
    torch.testing.assert_close(out.logsumexp(-1), torch.zeros(3, 10), atol=1e-4, rtol=0)
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    loss.backward()
    assert torch.isfinite(loss) and model.class_head.weight.grad.abs().sum() > 0
    assert model.lm_head.weight is model.wte.weight


def test_training_loss_from_the_target_class_equals_the_whole_table():
    model = factored()
    idx = torch.randint(0, V, (3, 12))
    fast = model.loss(idx[:, :-1], idx[:, 1:])
    table = model(idx[:, :-1])
    ref = torch.nn.functional.cross_entropy(table.reshape(-1, V), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    fast.backward()
    g_fast = model.class_head.weight.grad.clone()
    model.zero_grad()
    ref.backward()
    torch.testing.assert_close(g_fast, model.class_head.weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cfg", [SamplingConfig(0), SamplingConfig(1.0), SamplingConfig(0.7, top_k=5)],
                         ids=str)
def test_stream_and_slots_match_the_reference(cfg):
    """ARStream (cached, factored draw) and SlotManager give generate_reference's tokens
    (full forward, whole-table draw), across window slides."""
    model = factored()
    prompt = torch.randint(0, V, (1, 5))
    n = 2 * CTX + 3
    ref = generate_reference(model, prompt, n, cfg, seed=7)
    stream = ARStream(model, 1, cfg, "cpu", seed=7)
    stream.start(prompt)
    assert torch.equal(stream.generate(n), ref)
    slots = SlotManager(model, 2, "cpu")
    slots.add("a", prompt[0].tolist(), cfg, seed=int(stream._seeds[0]))
    assert torch.equal(slots.generate(n), ref)


def test_training_a_class_factored_manager(tmp_path, small_corpus_file):
    """``train --head-classes``: the manager trains, saves and loads with its classes, and
    the engine generates from it (a K that does not divide the roots learned is one error)."""
    from fractal_flood.errors import FractalFloodError
    from fractal_flood.models import checkpoint as ckpt
    from fractal_flood.train.run import TrainOptions, run_training

    logs = []
    res = run_training(TrainOptions(out_dir=tmp_path / "m", preset="tiny", corpus=str(small_corpus_file),
                                    parts=("manager",), lm_steps=6, batch=4, eval_every=3, save_every=6,
                                    progress=False, log=logs.append, head_classes=2))
    tok = ckpt.load_tokenizer(tmp_path / "m")
    model, meta = ckpt.load_manager(tmp_path / "m", tok)
    assert model.config.head_classes == 2 and meta["config"]["head_classes"] == 2
    assert any(f"output layer 2 classes x {tok.num_roots // 2}" in line for line in logs)
    assert res["manager"]["steps"] == 6
    odd = next(k for k in range(3, tok.num_roots) if tok.num_roots % k)
    with pytest.raises(FractalFloodError, match="--head-classes"):
        run_training(TrainOptions(out_dir=tmp_path / "n", preset="tiny", corpus=str(small_corpus_file),
                                  parts=("manager",), lm_steps=2, progress=False, log=lambda s: None,
                                  head_classes=odd, levels=[("roots", tok.num_roots, 4), ("chunks", 128, 16)]))
