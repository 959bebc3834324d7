"""CausalLM, sampling, ARStream (KV cache, sliding window, CUDA graph) and the HF conversion.

Tiny models on the CPU; every fast path is checked against its plain reference.
"""

import math

import pytest
import torch

from fractal_flood.errors import DeviceError
from fractal_flood.manager.stream import ARStream, generate_reference
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import RowSampling, SamplingConfig, row_uniform, sample

V, CTX = 37, 16
SAMPLERS = [
    SamplingConfig(temperature=0),
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.7, top_k=5),
    SamplingConfig(temperature=1.3, top_p=0.8),
    SamplingConfig(temperature=0.9, top_k=8, top_p=0.9),
]


def tiny(seed=0, context=CTX, vocab=V) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(CausalLMConfig(vocab_size=vocab, n_layers=2, d_model=32, n_heads=4,
                                    context=context))
    with torch.no_grad():  # sharper logits than at init, so sampling is not near-uniform
        model.wte.weight.mul_(20)
    return model.eval()


def test_shapes_and_params():
    model = tiny()
    idx = torch.randint(0, V, (3, 10))
    assert model(idx).shape == (3, 10, V)
    loss = model.loss(idx[:, :-1], idx[:, 1:])
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, CTX + 1, dtype=torch.long))


def test_causality():
    model = tiny()
    idx = torch.randint(0, V, (2, 12))
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % V
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=0, rtol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@torch.no_grad()
def test_cached_forward_matches_full():
    model = tiny()
    idx = torch.randint(0, V, (2, 13))
    full = model(idx)
    model.setup_cache(2)
    # stale junk in the cache must be masked out
    model.forward_cached(torch.randint(0, V, (2, CTX)), torch.arange(CTX))
    pre = model.forward_cached(idx[:, :7], torch.arange(7))
    steps = [model.forward_cached(idx[:, t:t + 1], torch.tensor([t])) for t in range(7, 13)]
    cached = torch.cat([pre] + steps, dim=1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_decode_by_direct_calls_equals_the_modules_bit_for_bit(monkeypatch):
    """``Block.decode`` (the eval-mode cached path without ``nn.Module`` calls) against the
    modules' ``forward`` over the same cache: the same hidden states and cache, every bit,
    with the library's linear layers; with the row-invariant ones (the CPU default,
    ``rowwise_linear``) the same up to summation order."""
    from fractal_flood.models.layers import Block

    monkeypatch.setenv("FRACTAL_FLOOD_ROWWISE", "blas")

    def run():
        model = tiny(3)
        model.setup_cache(2)
        idx = torch.randint(0, V, (2, CTX), generator=torch.Generator().manual_seed(1))
        out = [model.hidden_cached(idx[:, :9], torch.arange(9))]
        out += [model.hidden_cached(idx[:, t:t + 1], torch.tensor([t])) for t in range(9, CTX)]
        return torch.cat(out, 1), [(c.k.clone(), c.v.clone()) for c in model.kv_caches]

    direct, direct_cache = run()
    with monkeypatch.context() as m:
        m.setattr(Block, "decode", lambda self, x, mask, cache, pos: self(x, attn_mask=mask, cache=cache,
                                                                          input_pos=pos))
        modules, module_cache = run()
    assert torch.equal(direct, modules)
    assert all(torch.equal(a, b) for pair in zip(direct_cache, module_cache) for a, b in zip(*pair))
    monkeypatch.setenv("FRACTAL_FLOOD_ROWWISE", "kernel")
    rowwise, _ = run()
    torch.testing.assert_close(rowwise, modules, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", SAMPLERS, ids=str)
def test_stream_matches_reference_across_slides(cfg):
    model = tiny()
    prompt = torch.randint(0, V, (3, 5))
    n = 3 * CTX + 5  # several slides of the window
    ref = generate_reference(model, prompt, n, cfg, seed=7)
    stream = ARStream(model, 3, cfg, "cpu", seed=7)
    stream.start(prompt)
    got = torch.cat([stream.generate(k) for k in (1, 10, 0, n - 11)], dim=1)
    assert torch.equal(got, ref)
    assert stream.steps == n and stream.prefills >= 4  # prompt + at least 3 slides
    stream.start(prompt)  # restart reseeds: same tokens again
    assert torch.equal(stream.generate(n), ref)


def test_long_and_single_prompts():
    model = tiny()
    cfg = SamplingConfig(temperature=1.0, top_k=10)
    for prompt in (torch.randint(0, V, (2, CTX + 9)), torch.randint(0, V, (2, 1))):
        stream = ARStream(model, 2, cfg, "cpu", seed=3)
        stream.start(prompt)
        assert torch.equal(stream.generate(20), generate_reference(model, prompt, 20, cfg, seed=3))
    one = torch.randint(0, V, (4,))  # a (T,) prompt is repeated over the batch
    stream = ARStream(model, 2, SamplingConfig(temperature=0), "cpu")
    stream.start(one)
    out = stream.generate(6)
    assert out.shape == (2, 6) and torch.equal(out[0], out[1])


def test_stream_errors():
    model = tiny()
    with pytest.raises(DeviceError, match="CUDA"):
        ARStream(model, 1, SamplingConfig(), "cpu", cuda_graph=True)
    stream = ARStream(model, 2, SamplingConfig(), "cpu")
    with pytest.raises(RuntimeError, match="start"):
        stream.generate(1)
    with pytest.raises(ValueError, match="batch"):
        stream.start(torch.zeros(3, 4, dtype=torch.long))


def _counters(B, seed=0, step=0):
    return torch.full((B,), seed, dtype=torch.long), torch.full((B,), step, dtype=torch.long)


def test_sampling_special_cases():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    argmax = logits.argmax(-1)
    for cfg in (SamplingConfig(temperature=0), SamplingConfig(top_k=1),
                SamplingConfig(temperature=2.0, top_p=1e-6)):
        assert torch.equal(sample(logits, cfg, *_counters(64)), argmax)
    cfg = SamplingConfig(temperature=1.5, top_k=5, top_p=0.95)
    a = sample(logits, cfg, *_counters(64, seed=1))
    b = sample(logits, cfg, *_counters(64, seed=1))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(logits, cfg, *_counters(64, seed=1, step=1)))


def test_sampling_stays_in_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 50, generator=g).repeat(100, 1)  # (800, 50): 100 draws per row
    seeds, steps = torch.arange(800), torch.zeros(800, dtype=torch.long)  # a seed per row
    top5 = logits.topk(5).indices
    got = sample(logits, SamplingConfig(temperature=2.0, top_k=5), seeds, steps)
    assert (got[:, None] == top5).any(-1).all()
    assert len(set(got[::8].tolist())) > 1  # actually random, not argmax
    probs, order = logits.softmax(-1).sort(-1, descending=True)
    nucleus_size = ((probs.cumsum(-1) - probs) < 0.5).sum(-1)  # (800,)
    got = sample(logits, SamplingConfig(top_p=0.5), seeds, steps)
    rank = (order == got[:, None]).float().argmax(-1)
    assert (rank < nucleus_size).all()


def test_sampling_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(40000, 1).log_softmax(-1)
    seeds = torch.arange(40000)  # draws over seeds
    got = sample(logits, SamplingConfig(), seeds, torch.zeros_like(seeds))
    freq = torch.bincount(got, minlength=4).float() / got.numel()
    torch.testing.assert_close(freq, logits[0].exp(), atol=0.01, rtol=0)
    steps = torch.arange(40000)  # and over steps of one seed
    got = sample(logits, SamplingConfig(), torch.full_like(steps, 7), steps)
    freq = torch.bincount(got, minlength=4).float() / got.numel()
    torch.testing.assert_close(freq, logits[0].exp(), atol=0.01, rtol=0)


def test_per_row_settings_equal_one_config_each():
    """Rows with different settings in one batch draw as each would alone: the engine's
    premise (a request's tokens do not depend on its neighbours)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(len(SAMPLERS), 50, generator=g) * 2
    seeds, steps = torch.arange(len(SAMPLERS)) * 1000003, torch.arange(len(SAMPLERS))
    rows = RowSampling.of(SAMPLERS)
    together = sample(logits, rows, seeds, steps)
    for i, cfg in enumerate(SAMPLERS):
        alone = sample(logits[i:i + 1], cfg, seeds[i:i + 1], steps[i:i + 1])
        assert int(together[i]) == int(alone[0])
    # a 63-bit seed differs from its low 32 bits
    big = torch.tensor([(1 << 40) + 5]), torch.tensor([5])
    u = [row_uniform(s, torch.zeros(1, dtype=torch.long)) for s in big]
    assert not torch.equal(u[0], u[1]) and ((u[0] > 0) & (u[0] < 1)).all()


def test_row_streams_match_batch_one_streams():
    model = tiny()
    cfg = SamplingConfig(temperature=1.0, top_p=0.95)
    prompt = torch.randint(0, V, (5,), generator=torch.Generator().manual_seed(2))
    batched = ARStream(model, 3, cfg, "cpu", seed=[11, 4, 99])
    batched.start(prompt)
    out = batched.generate(2 * CTX)
    for row, seed in enumerate((11, 4, 99)):
        solo = ARStream(model, 1, cfg, "cpu", seed=seed)
        solo.start(prompt)
        assert torch.equal(solo.generate(2 * CTX)[0], out[row])


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(temperature=float("nan")),
                                    dict(top_k=0), dict(top_k=2.5), dict(top_p=0.0),
                                    dict(top_p=1.5), dict(temperature=float("inf"))])
def test_sampling_config_validation(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingConfig(**kwargs)


def test_training_learns_a_pattern():
    torch.manual_seed(0)
    pattern = torch.randperm(V)[:7]  # a cycle of 7 distinct tokens
    model = CausalLM(CausalLMConfig(vocab_size=V, n_layers=2, d_model=32, n_heads=4, context=CTX))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        starts = torch.randint(0, 7, (16, 1))
        seq = pattern[(starts + torch.arange(CTX + 1)) % 7]  # (16, CTX + 1)
        loss = model.loss(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    # the learned cycle continues past several window slides
    stream = ARStream(model.eval(), 1, SamplingConfig(temperature=0), "cpu")
    stream.start(pattern[:3])
    out = stream.generate(3 * CTX)[0]
    assert torch.equal(out, pattern[(3 + torch.arange(3 * CTX)) % 7])


def test_hf_conversion_same_logits():
    pytest.importorskip("transformers")
    from fractal_flood.measure.hf_gpt2 import to_hf_gpt2

    model = tiny()
    hf = to_hf_gpt2(model)
    idx = torch.randint(0, V, (2, CTX))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cfg", SAMPLERS, ids=str)
def test_cuda_graph_matches_eager(cfg):
    model = tiny().cuda()
    prompt = torch.randint(0, V, (4, 6), device="cuda")
    runs = []
    for graph in (False, True):
        stream = ARStream(model, 4, cfg, "cuda", cuda_graph=graph, seed=11)
        stream.start(prompt)
        runs.append(torch.cat([stream.generate(k) for k in (7, 2 * CTX, 9)], dim=1))
        stream.start(prompt)  # restart reseeds the graph's generator too
        assert torch.equal(stream.generate(7), runs[-1][:, :7])
    assert torch.equal(runs[0], runs[1])


def _compiled_vs_eager(device: str, graph: bool):
    model = tiny().to(device)
    cfg = SamplingConfig(temperature=0.9, top_k=8)
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(3)).to(device)
    runs = []
    for compiled in (False, True):
        stream = ARStream(model, 2, cfg, device, cuda_graph=graph, seed=5, compile=compiled)
        stream.start(prompt)
        runs.append(stream.generate(2 * CTX + 3))  # crosses a window slide
    assert torch.equal(runs[0], runs[1])


@pytest.mark.slow  # compiling on a CPU takes minutes on a small machine
def test_compiled_step_matches_eager_cpu():
    """The torch.compile'd decode step is a fast path: same tokens as the eager step."""
    pytest.importorskip("torch._inductor")
    _compiled_vs_eager("cpu", graph=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_step_in_cuda_graph_matches_eager():
    _compiled_vs_eager("cuda", graph=True)


def test_two_streams_on_one_model_keep_their_own_cache():
    """A second stream (another batch size) on the same model must not corrupt the first."""
    model = tiny()
    cfg = SamplingConfig(temperature=0.8)
    prompt = torch.randint(0, V, (5,), generator=torch.Generator().manual_seed(2))
    alone = ARStream(model, 2, cfg, "cpu", seed=4)
    alone.start(prompt)
    expected = alone.generate(2 * CTX)
    a = ARStream(model, 2, cfg, "cpu", seed=4)
    b = ARStream(model, 3, cfg, "cpu", seed=9)
    a.start(prompt)
    first = a.generate(CTX)
    b.start(prompt)
    b.generate(CTX + 3)  # installs b's cache and fills it
    second = a.generate(CTX)  # a goes on from its own cache
    assert torch.equal(torch.cat([first, second], dim=1), expected)


# ---- regularisation: dropout, weight-decay groups, config round trip ----------------------------

def _with_dropout(p: float, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=V, n_layers=2, d_model=32, n_heads=4, context=CTX,
                                   dropout=p))


def test_dropout_acts_in_training_only():
    drop, plain = _with_dropout(0.3), _with_dropout(0.0)
    plain.load_state_dict(drop.state_dict())  # no new weights: the same state dict fits both
    idx = torch.randint(0, V, (2, 12))
    drop.train()
    a, b = drop(idx), drop(idx)
    assert not torch.allclose(a, b)  # random masks: dropout really acts in training
    plain.train()
    torch.testing.assert_close(plain(idx), plain(idx), atol=0, rtol=0)  # rate 0: nothing random
    drop.eval()
    plain.eval()
    torch.testing.assert_close(drop(idx), plain(idx), atol=0, rtol=0)


@torch.no_grad()
def test_cached_decode_equals_full_forward_with_dropout_in_eval():
    model = _with_dropout(0.5).eval()
    idx = torch.randint(0, V, (2, 11))
    full = model(idx)
    model.setup_cache(2)
    pre = model.forward_cached(idx[:, :4], torch.arange(4))
    steps = [model.forward_cached(idx[:, t:t + 1], torch.tensor([t])) for t in range(4, 11)]
    torch.testing.assert_close(torch.cat([pre] + steps, dim=1), full, atol=1e-5, rtol=1e-5)
    cfg = SamplingConfig(temperature=0.9, top_k=6)
    stream = ARStream(model, 2, cfg, "cpu", seed=3)
    stream.start(idx[:, :3])
    assert torch.equal(stream.generate(2 * CTX), generate_reference(model, idx[:, :3], 2 * CTX, cfg, seed=3))


def test_config_round_trip_and_old_configs():
    cfg = CausalLMConfig(vocab_size=V, n_layers=3, d_model=48, n_heads=4, context=CTX, dropout=0.15)
    assert CausalLMConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["dropout"]  # a checkpoint written before the field existed
    assert CausalLMConfig.from_dict(old).dropout == 0.0
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="dropout"):
            CausalLMConfig(vocab_size=V, dropout=bad)


def test_checkpoint_without_dropout_field_loads_identically(tmp_path):
    import json

    from fractal_flood.models import checkpoint as ckpt

    model = tiny()
    ckpt.save_part(tmp_path, "manager", model, dtype=torch.float32)
    meta_path = tmp_path / "manager.json"
    meta = json.loads(meta_path.read_text())
    assert meta["config"].pop("dropout") == 0.0
    meta_path.write_text(json.dumps(meta))
    loaded, _ = ckpt.load_part(tmp_path, "manager")
    assert loaded.config.dropout == 0.0 and not loaded.training
    idx = torch.randint(0, V, (2, CTX))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model(idx), atol=0, rtol=0)


def test_optimizer_groups():
    model = _with_dropout(0.0)
    names = {id(p): n for n, p in model.named_parameters()}  # the tied head appears once, as wte
    every = set(names)
    blocks_2d = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    tables = {id(model.wte.weight), id(model.wpe.weight)}
    for decay, expected in [("matrices", blocks_2d), ("matrices+embeddings", blocks_2d | tables)]:
        decayed, kept = model.optimizer_groups(0.1, decay)
        ids_d, ids_k = [id(p) for p in decayed["params"]], [id(p) for p in kept["params"]]
        assert set(ids_d) == expected and decayed["weight_decay"] == 0.1
        assert kept["weight_decay"] == 0.0
        assert sorted(ids_d + ids_k) == sorted(every)  # each parameter exactly once
        assert not any(names[i].endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
                       for i in ids_d)
    (group,) = model.optimizer_groups(0.01, "all")
    assert {id(p) for p in group["params"]} == every
    with pytest.raises(ValueError, match="decay"):
        model.optimizer_groups(0.1, "everything")


def test_weight_decay_shrinks_only_its_group():
    """With zero gradients AdamW moves a parameter only by its decay."""
    from fractal_flood.train.lm_task import lm_optimizer

    model = _with_dropout(0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = lm_optimizer(model, lr=0.1, weight_decay=0.5, decay="matrices")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model.blocks[0].attn.c_attn.weight, torch.tensor(0.95))  # 1 - lr * wd
    for p in (model.wte.weight, model.wpe.weight, model.blocks[0].attn.c_attn.bias, model.ln_f.weight):
        assert torch.equal(p, torch.ones_like(p))


def test_training_with_regularisation_options(tmp_path, small_corpus_file):
    from fractal_flood.models import checkpoint as ckpt
    from fractal_flood.train.run import TrainOptions, run_training

    logs = []
    res = run_training(TrainOptions(out_dir=tmp_path / "m", preset="tiny", corpus=str(small_corpus_file),
                                    parts=("manager",), lm_steps=6, batch=4, eval_every=3, save_every=6,
                                    progress=False, log=logs.append, dropout=0.2, weight_decay=0.1,
                                    decay="matrices"))
    assert res["manager"]["steps"] == 6 and math.isfinite(res["manager"]["val_bpc"])
    assert any("dropout 0.2, weight decay 0.1 on matrices" in line for line in logs)
    model, meta = ckpt.load_manager(tmp_path / "m", ckpt.load_tokenizer(tmp_path / "m"))
    assert model.config.dropout == 0.2 and meta["config"]["dropout"] == 0.2


def test_lm_shape_sets_the_manager_and_the_peer(tmp_path, small_corpus_file):
    from fractal_flood.models import checkpoint as ckpt
    from fractal_flood.train.run import TrainOptions, run_training

    logs = []
    run_training(TrainOptions(out_dir=tmp_path / "m", preset="tiny", corpus=str(small_corpus_file),
                              parts=("manager", "peer"), lm_steps=2, batch=4, eval_every=2, save_every=2,
                              progress=False, log=logs.append, lm_shape=(1, 48, 3)))
    tok = ckpt.load_tokenizer(tmp_path / "m")
    manager, _ = ckpt.load_manager(tmp_path / "m", tok)
    peer, _ = ckpt.load_peer(tmp_path / "m", tok)
    for m in (manager, peer):
        assert (m.config.n_layers, m.config.d_model, m.config.n_heads) == (1, 48, 3)
        assert len(m.blocks) == 1 and m.wte.weight.shape[1] == 48
    assert sum("(1 layers x 48 x 3 heads)" in line for line in logs) == 2


@pytest.mark.parametrize("bad", [dict(dropout=1.0), dict(weight_decay=-1.0), dict(decay="some"),
                                 dict(lm_shape=(2, 50, 4)), dict(lm_shape=(0, 64, 4)), dict(lm_shape="2x64x4")])
def test_bad_regularisation_options_are_clear_errors(tmp_path, small_corpus_file, bad):
    from fractal_flood.errors import FractalFloodError
    from fractal_flood.train.run import TrainOptions, run_training

    with pytest.raises(FractalFloodError):
        run_training(TrainOptions(out_dir=tmp_path / "m", preset="tiny", corpus=str(small_corpus_file),
                                  parts=("manager",), lm_steps=2, progress=False, log=lambda s: None, **bad))
    assert not (tmp_path / "m").exists()  # rejected before anything is written


@pytest.mark.parametrize("flag", [["--dropout", "1.5"], ["--weight-decay", "-1"], ["--decay", "some"]])
def test_cli_rejects_bad_regularisation_in_one_line(tmp_path, flag, capsys):
    from fractal_flood.cli.main import main

    try:
        rc = main(["train", "--out", str(tmp_path / "m"), "--parts", "manager", *flag])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag[0] in err, err
