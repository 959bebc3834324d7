"""FractalDiffusionModel and the unified vocabulary: shapes, levels from the config,
bidirectional attention, disjoint vocabulary blocks, the seed preset's size."""

import pytest
import torch

from fractal_flood.config import RendererConfig, get_preset
from fractal_flood.renderer import FractalDiffusionModel
from fractal_flood.vocab import UnifiedVocab

# [num_conditions, num_targets, max_len] per expansion step, as a tokenizer gives them
TWO_LEVELS = [[40, 23, 4], [23, 11, 7]]
THREE_LEVELS = [[30, 20, 3], [20, 12, 5], [12, 9, 6]]

pytestmark = pytest.mark.usefixtures("single_thread")


def small(levels, seed=0) -> FractalDiffusionModel:
    torch.manual_seed(seed)
    cfg = RendererConfig(levels=levels, n_layers=2, d_model=32, n_heads=4, timesteps=10)
    return FractalDiffusionModel(cfg).eval()


def batch(levels, level, B=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    n_cond, n_tgt, L = levels[level]
    cond = torch.randint(0, n_cond, (B,), generator=g)
    targets = torch.randint(0, n_tgt + 1, (B, L), generator=g)  # pads included
    t = torch.randint(0, 10, (B,), generator=g)
    return cond, targets, t


@pytest.mark.parametrize("levels", [TWO_LEVELS, THREE_LEVELS], ids=["2-level", "3-level"])
def test_shapes_per_level(levels):
    model = small(levels)
    assert model.num_levels == len(levels)
    for level, (_, n_tgt, L) in enumerate(levels):
        cond, targets, t = batch(levels, level)
        logits, energy = model(level, cond, targets, t)
        assert logits.shape == (5, L, n_tgt + 1)
        assert energy.shape == (5,)
        assert model.num_classes(level) == n_tgt + 1
        assert model.pad_id(level) == n_tgt
        assert model.denoise(level, cond, targets, t).shape == (5, L, n_tgt + 1)
        assert model.energy(level, cond, targets).shape == (5,)
        assert torch.isfinite(logits).all() and torch.isfinite(energy).all()


def test_levels_come_from_the_config():
    """Level embedding and heads are sized by config.levels: no two-level constant."""
    model = small(THREE_LEVELS)
    assert model.level_emb.num_embeddings == 3
    assert len(model.heads) == 3
    assert [h.out_features for h in model.heads] == [21, 13, 10]
    assert model.max_lens == [3, 5, 6]
    assert model.wpe.num_embeddings >= 1 + 6
    assert model.wte.num_embeddings == model.vocab.total == (30 + 1) + (20 + 1) + (12 + 1) + (9 + 1)


def test_level_embedding_matters():
    """The same input told a different level gives different hidden states."""
    levels = [[20, 20, 4], [20, 20, 4]]  # both levels accept the same ids
    model = small(levels)
    cond, targets, t = batch(levels, 0)
    with torch.no_grad():
        h0 = model._hidden(0, cond, targets, t)
        h1 = model._hidden(1, cond, targets, t)
    assert not torch.allclose(h0, h1)


def test_forward_matches_denoise_and_energy_at_t0():
    model = small(TWO_LEVELS)
    cond, targets, _ = batch(TWO_LEVELS, 1)
    t0 = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        logits, energy = model(1, cond, targets, t0)
        torch.testing.assert_close(logits, model.denoise(1, cond, targets, t0))
        torch.testing.assert_close(energy, model.energy(1, cond, targets))


def test_inconsistent_levels_are_rejected():
    with pytest.raises(ValueError):
        FractalDiffusionModel(RendererConfig(levels=[[10, 7, 3], [8, 5, 4]], n_layers=1, d_model=16,
                                             n_heads=2))
    with pytest.raises(ValueError):
        FractalDiffusionModel(RendererConfig(levels=[], n_layers=1, d_model=16, n_heads=2))


@pytest.mark.parametrize("levels", [TWO_LEVELS, THREE_LEVELS], ids=["2-level", "3-level"])
def test_bidirectional(levels):
    """Changing the last target changes the logits at the first position (no causal mask),
    and the energy; items of a batch do not influence each other."""
    model = small(levels)
    for level in range(len(levels)):
        cond, targets, t = batch(levels, level)
        changed = targets.clone()
        changed[:, -1] = (changed[:, -1] + 1) % (levels[level][1] + 1)
        with torch.no_grad():
            a, ea = model(level, cond, targets, t)
            b, eb = model(level, cond, changed, t)
        assert (a[:, 0] - b[:, 0]).abs().amax(-1).min() > 1e-6, "first position ignores a later target"
        assert (ea - eb).abs().min() > 1e-7
        # batch independence: item 0 alone gives the same result as in the batch
        with torch.no_grad():
            solo, esolo = model(level, cond[:1], targets[:1], t[:1])
        torch.testing.assert_close(solo, a[:1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(esolo, ea[:1], atol=1e-5, rtol=1e-5)


def test_condition_and_timestep_matter():
    model = small(TWO_LEVELS)
    cond, targets, t = batch(TWO_LEVELS, 0)
    with torch.no_grad():
        a = model.denoise(0, cond, targets, t)
        b = model.denoise(0, (cond + 1) % 40, targets, t)
        c = model.denoise(0, cond, targets, (t + 1) % 10)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("levels", [TWO_LEVELS, THREE_LEVELS], ids=["2-level", "3-level"])
def test_unified_vocab_offsets_do_not_overlap(levels):
    vocab = UnifiedVocab.from_levels(levels)
    sizes = [levels[0][0]] + [lv[1] for lv in levels]
    assert list(vocab.sizes) == sizes
    spans = [(vocab.offset(v), vocab.offset(v) + vocab.sizes[v] + 1) for v in range(len(sizes))]
    # contiguous, disjoint blocks covering [0, total): each holds its tokens and its pad
    assert spans[0][0] == 0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start
    assert spans[-1][1] == vocab.total
    for v in range(len(sizes)):
        assert vocab.pad_id(v) == sizes[v]
        assert spans[v][0] + vocab.pad_id(v) == spans[v][1] - 1  # the pad is its block's last row
    ids = set()
    for start, end in spans:
        block = set(range(start, end))
        assert not ids & block
        ids |= block


def test_condition_and_target_rows_are_distinct():
    """A chunk id as a level-0 target and the same chunk id as a level-1 condition share one
    embedding row; a root id never lands in the chunk block."""
    model = small(TWO_LEVELS)
    v = model.vocab
    assert v.offset(1) == TWO_LEVELS[0][0] + 1  # roots and their pad come first
    assert v.offset(2) == v.offset(1) + TWO_LEVELS[0][1] + 1


def test_seed_preset_size(shipped_tokenizer):
    """The seed preset at the default hierarchy is ~6M parameters (docs/DESIGN.md: about 6M)."""
    preset = get_preset("seed")
    levels = [[s.num_conditions, s.num_targets, s.max_len] for s in shipped_tokenizer.levels]
    model = FractalDiffusionModel(RendererConfig(levels=levels, **preset.renderer))
    n = model.num_params()
    assert n == sum(p.numel() for p in model.parameters())
    assert 5.0e6 < n < 7.5e6, n
    tiny = FractalDiffusionModel(RendererConfig(levels=levels, **get_preset("tiny").renderer))
    assert tiny.num_params() < n / 10
