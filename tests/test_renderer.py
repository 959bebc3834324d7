"""FractalDiffusionModel, the Level type and the unified vocabulary: shapes, levels from the
config, length heads, masked canvases equal to exact-length canvases, bidirectional
attention, disjoint vocabulary blocks, the preset sizes."""

import pytest
import torch

from fractal_flood.hierarchy.levels import Level, check_hierarchy
from fractal_flood.hierarchy.vocab import UnifiedVocab
from fractal_flood.models.config import RendererConfig, get_preset
from fractal_flood.models.renderer import FractalDiffusionModel

# hierarchies as a tokenizer gives them, top to bottom
TWO_LEVELS = [Level("roots", 40, 4), Level("chunks", 23, 7), Level("chars", 11, 0)]
THREE_LEVELS = [Level("a", 30, 3), Level("b", 20, 5), Level("c", 12, 6), Level("d", 9, 0)]
HIERARCHIES = pytest.mark.parametrize("levels", [TWO_LEVELS, THREE_LEVELS], ids=["2-step", "3-step"])

pytestmark = pytest.mark.usefixtures("single_thread")


def small(levels, seed=0) -> FractalDiffusionModel:
    torch.manual_seed(seed)
    cfg = RendererConfig(levels=[lv.to_dict() for lv in levels], n_layers=2, d_model=32, n_heads=4,
                         timesteps=10)
    return FractalDiffusionModel(cfg).eval()


def batch(levels, level, B=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    parent, child = levels[level], levels[level + 1]
    cond = torch.randint(0, parent.size, (B,), generator=g)
    targets = torch.randint(0, child.num_classes, (B, parent.max_children), generator=g)  # pads included
    t = torch.randint(0, 10, (B,), generator=g)
    return cond, targets, t


@HIERARCHIES
def test_shapes_per_level(levels):
    model = small(levels)
    assert model.num_levels == len(levels) - 1
    for level in range(model.num_levels):
        child, L = levels[level + 1], levels[level].max_children
        cond, targets, t = batch(levels, level)
        logits, len_logits, energy = model(level, cond, targets, t)
        assert logits.shape == (5, L, child.num_classes)
        assert energy.shape == (5,)
        if child.max_children:  # the children expand further: their lengths are predicted
            assert len_logits.shape == (5, L, child.max_children + 1)
        else:
            assert len_logits is None
        assert model.num_classes(level) == child.num_classes
        assert model.pad_id(level) == child.pad_id
        assert model.denoise(level, cond, targets, t)[0].shape == logits.shape
        assert model.energy(level, cond, targets).shape == (5,)
        assert torch.isfinite(logits).all() and torch.isfinite(energy).all()


def test_levels_come_from_the_config():
    """Level embedding and heads are sized by config.levels: no two-level constant."""
    model = small(THREE_LEVELS)
    assert model.level_emb.num_embeddings == 3
    assert len(model.heads) == 3
    assert [h.out_features for h in model.heads] == [21, 13, 10]
    assert sorted(model.length_heads) == ["0", "1"]
    assert [model.length_heads[k].out_features for k in ("0", "1")] == [6, 7]
    assert model.max_lens == [3, 5, 6]
    assert model.wpe.num_embeddings >= 1 + 6
    assert model.wte.num_embeddings == model.vocab.total == (30 + 1) + (20 + 1) + (12 + 1) + (9 + 1)


@HIERARCHIES
def test_masked_canvas_equals_exact_canvas(levels):
    """A row padded past its length and masked computes what the exact-length canvas does:
    the packed flood and the padded reference are the same function."""
    model = small(levels)
    for level in range(1, model.num_levels):  # the packed levels
        cond, targets, t = batch(levels, level, B=6)
        L = targets.shape[1]
        lengths = torch.tensor([1, L, 2, L - 1, 1, 3]).clamp(max=L)
        with torch.no_grad():
            logits, len_logits, energy = model(level, cond, targets, t, lengths)
            for i, n in enumerate(lengths.tolist()):
                lo, ll, e = model(level, cond[i:i + 1], targets[i:i + 1, :n], t[i:i + 1])
                torch.testing.assert_close(logits[i:i + 1, :n], lo, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(energy[i:i + 1], e, atol=1e-5, rtol=1e-5)
                if ll is not None:
                    torch.testing.assert_close(len_logits[i:i + 1, :n], ll, atol=1e-5, rtol=1e-5)
        # and what lies past the length does not matter
        changed = targets.clone()
        changed[0, 1:] = (changed[0, 1:] + 1) % levels[level + 1].num_classes
        with torch.no_grad():
            lo2, _, e2 = model(level, cond, changed, t, lengths)
        torch.testing.assert_close(lo2[0, :1], logits[0, :1])
        torch.testing.assert_close(e2[0], energy[0])


def test_level_embedding_matters():
    """The same input told a different level gives different hidden states."""
    levels = [Level("a", 20, 4), Level("b", 20, 4), Level("c", 20, 0)]
    model = small(levels)
    cond, targets, t = batch(levels, 0)
    with torch.no_grad():
        h0, _ = model._hidden(0, cond, targets, t, None)
        h1, _ = model._hidden(1, cond, targets, t, None)
    assert not torch.allclose(h0, h1)


def test_forward_matches_denoise_and_energy_at_t0():
    model = small(TWO_LEVELS)
    cond, targets, _ = batch(TWO_LEVELS, 1)
    t0 = torch.zeros(5, dtype=torch.long)
    lengths = torch.tensor([1, 2, 3, 4, 7])
    with torch.no_grad():
        logits, _, energy = model(1, cond, targets, t0, lengths)
        torch.testing.assert_close(logits, model.denoise(1, cond, targets, t0, lengths)[0])
        torch.testing.assert_close(energy, model.energy(1, cond, targets, lengths))


@pytest.mark.parametrize("levels", [
    [],
    [{"name": "roots", "size": 10, "max_children": 3}],  # one level expands to nothing
    [{"name": "a", "size": 10, "max_children": 3}, {"name": "b", "size": 5, "max_children": 2}],  # bottom has children
    [{"name": "a", "size": 10, "max_children": 0}, {"name": "b", "size": 5, "max_children": 0}],  # top has none
    [{"name": "a", "size": 0, "max_children": 3}, {"name": "b", "size": 5, "max_children": 0}],
    [{"name": "a", "size": 10, "max_children": -1}, {"name": "b", "size": 5, "max_children": 0}],
    [[10, 7, 3], [7, 5, 4]],  # the old triple format
    [{"name": "a", "size": 10, "max_children": 3, "extra": 1}, {"name": "b", "size": 5, "max_children": 0}],
])
def test_bad_levels_are_rejected(levels):
    with pytest.raises(ValueError):
        FractalDiffusionModel(RendererConfig(levels=levels, n_layers=1, d_model=16, n_heads=2))


def test_level_round_trip():
    lv = Level("chunks", 1024, 16)
    assert Level.from_dict(lv.to_dict()) == lv
    assert lv.pad_id == 1024 and lv.num_classes == 1025
    assert check_hierarchy([lv.to_dict(), {"name": "chars", "size": 65, "max_children": 0}])[0] == lv


@HIERARCHIES
def test_bidirectional(levels):
    """Changing the last target changes the logits at the first position (no causal mask),
    and the energy; items of a batch do not influence each other."""
    model = small(levels)
    for level in range(model.num_levels):
        cond, targets, t = batch(levels, level)
        changed = targets.clone()
        changed[:, -1] = (changed[:, -1] + 1) % levels[level + 1].num_classes
        with torch.no_grad():
            a, _, ea = model(level, cond, targets, t)
            b, _, eb = model(level, cond, changed, t)
        assert (a[:, 0] - b[:, 0]).abs().amax(-1).min() > 1e-6, "first position ignores a later target"
        assert (ea - eb).abs().min() > 1e-7
        # batch independence: item 0 alone gives the same result as in the batch
        with torch.no_grad():
            solo, _, esolo = model(level, cond[:1], targets[:1], t[:1])
        torch.testing.assert_close(solo, a[:1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(esolo, ea[:1], atol=1e-5, rtol=1e-5)


def test_condition_and_timestep_matter():
    model = small(TWO_LEVELS)
    cond, targets, t = batch(TWO_LEVELS, 0)
    with torch.no_grad():
        a = model.denoise(0, cond, targets, t)[0]
        b = model.denoise(0, (cond + 1) % 40, targets, t)[0]
        c = model.denoise(0, cond, targets, (t + 1) % 10)[0]
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


@HIERARCHIES
def test_unified_vocab_offsets_do_not_overlap(levels):
    vocab = UnifiedVocab(tuple(levels))
    spans = [(vocab.offset(v), vocab.offset(v) + levels[v].num_classes) for v in range(len(levels))]
    # contiguous, disjoint blocks covering [0, total): each holds its tokens and its pad
    assert spans[0][0] == 0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start
    assert spans[-1][1] == vocab.total
    for v in range(len(levels)):
        assert spans[v][0] + levels[v].pad_id == spans[v][1] - 1  # the pad is its block's last row


def test_condition_and_target_rows_are_distinct():
    """A chunk id as a level-0 target and the same chunk id as a level-1 condition share one
    embedding row; a root id never lands in the chunk block."""
    model = small(TWO_LEVELS)
    v = model.vocab
    assert v.offset(1) == TWO_LEVELS[0].size + 1  # roots and their pad come first
    assert v.offset(2) == v.offset(1) + TWO_LEVELS[1].size + 1


def test_preset_sizes(shipped_tokenizer):
    """The seed preset at the default hierarchy is ~6M parameters (the plan's 6 x 256); the
    default (small, 1 x 64) and the tests' tiny preset (2 x 64, a short schedule) are over ten
    times smaller."""
    from fractal_flood.hierarchy.level_specs import default_specs
    from fractal_flood.hierarchy.levels import Level
    chars = shipped_tokenizer.levels[-1]  # the alphabet; the BPE levels at the presets' default
    levels = [lv.to_dict() for lv in default_specs() + [Level(chars.name, chars.size, 0)]]
    size = lambda name: FractalDiffusionModel(RendererConfig(levels=levels, **get_preset(name).renderer)).num_params()
    seed = size("seed")
    assert 5.0e6 < seed < 7.5e6, seed
    assert size("small") < seed / 10
    assert size("tiny") < seed / 10
