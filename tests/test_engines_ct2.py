"""The AR peer in CTranslate2 (``measure/ct2_peer.py``): converted through ``to_hf_gpt2``, its
greedy tokens are the project's own loop's (across a window slide), its held-out loss is the
same model's, its work count matches its calls; and asking for engine rows without
CTranslate2 is one line and a non-zero exit."""

import importlib.util
import tempfile

import pytest
import torch

from fractal_flood.cli.main import main
from fractal_flood.manager.stream import ARStream
from fractal_flood.measure import ct2_peer
from fractal_flood.measure.metrics import heldout_loss
from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.causal_lm import CausalLM
from fractal_flood.models.config import CausalLMConfig
from fractal_flood.sampling.tokens import SamplingConfig

needs_ct2 = pytest.mark.skipif(not ct2_peer.available(),
                               reason="ctranslate2 and transformers are not installed (pip install -e '.[engines]')")

GREEDY = SamplingConfig(temperature=0)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shipped():
    """The shipped model's tokenizer and AR peer (fp32, CPU), and the peer in CTranslate2."""
    if not ct2_peer.available():
        pytest.skip("ctranslate2 and transformers are not installed (pip install -e '.[engines]')")
    m = ckpt.load_model_dir(None, torch.device("cpu"), torch.float32, optional=("peer",))
    assert m.peer is not None, "the shipped model has an AR peer"
    with tempfile.TemporaryDirectory(prefix="ct2-test-") as tmp:
        yield m.tokenizer, m.peer, ct2_peer.convert(m.peer, f"{tmp}/peer")


@needs_ct2
def test_greedy_tokens_equal_the_projects_loop(shipped):
    """Two prompts, past the context (256) so the window slides: every token the same."""
    tok, peer, path = shipped
    prompts = [tok.encode_chunks("ROMEO:\nWhat"), tok.encode_chunks("\nKING HENR")]
    L = min(map(len, prompts))
    prompts = [p[-L:] for p in prompts]
    n = peer.config.context + 40
    engine = ct2_peer.CT2Peer(path, peer.config.context, "float32", 1)
    theirs = engine.generate(prompts, n, GREEDY)
    stream = ARStream(peer, 2, GREEDY, "cpu", seed=0)
    stream.start(torch.tensor(prompts))
    ours = stream.generate(n).tolist()
    assert theirs == ours
    assert engine.calls == ct2_peer.windowed_work(L, n, peer.config.context)[0] == 2


@needs_ct2
def test_heldout_loss_is_the_same_models(shipped, corpus_text):
    tok, peer, path = shipped
    ids = torch.tensor(tok.encode_chunks(corpus_text[-20_000:]))
    want = heldout_loss(peer, ids, "cpu", 4)
    assert ct2_peer.CT2Peer(path, peer.config.context, "float32", 1).heldout_loss(ids, 4) == \
        pytest.approx(want, abs=1e-4)
    int8 = ct2_peer.CT2Peer(path, peer.config.context, "int8", 1).heldout_loss(ids, 4)
    assert int8 == pytest.approx(want, abs=0.05)  # quantized: close, not equal


@needs_ct2
def test_sampling_writes_every_token_and_a_fresh_engine_repeats(shipped):
    tok, peer, path = shipped
    s = SamplingConfig(temperature=0.8)
    a = ct2_peer.CT2Peer(path, peer.config.context, "int8", 1, seed=5).generate([[0]] * 3, 20, s)
    assert [len(x) for x in a] == [20] * 3 and all(0 <= i < peer.config.vocab_size for x in a for i in x)
    assert ct2_peer.CT2Peer(path, peer.config.context, "int8", 1, seed=5).generate([[0]] * 3, 20, s) == a


def test_windowed_work_counts_the_window_rule():
    # context 8, keep 4: a 1-token prompt writes 8, then 5 per window
    assert ct2_peer.windowed_work(1, 8, 8) == (1, 8, sum(range(1, 9)))
    calls, positions, _ = ct2_peer.windowed_work(1, 18, 8)
    assert calls == 3 and positions == 8 + (3 + 5) + (3 + 5)


def test_a_class_factored_head_has_no_ct2_form():
    model = CausalLM(CausalLMConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, context=8, head_classes=8))
    assert "class-factored" in ct2_peer.convertible(model)


def test_engine_rows_without_ctranslate2_are_one_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2" else real(name, *a))
    assert main(["bench", "--quick", "--device", "cpu", "--engines"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ctranslate2" in err and "fractal-flood[engines]" in err


def test_prompts_are_padded_to_one_length():
    assert ct2_peer.pad_prompts([[5, 6, 7], [8], [1, 2]], 0) == [[5, 6, 7], [0, 0, 8], [0, 1, 2]]


@needs_ct2
def test_prompts_of_different_lengths_are_refused(shipped):
    tok, peer, path = shipped
    with pytest.raises(ValueError, match="one length"):
        ct2_peer.CT2Peer(path, peer.config.context).generate([[1, 2], [3]], 4, GREEDY)


@needs_ct2
def test_loading_an_engine_leaves_torch_threads_alone(shipped):
    tok, peer, path = shipped
    before = torch.get_num_threads()
    ct2_peer.CT2Peer(path, peer.config.context, "float32", before + 1)
    assert torch.get_num_threads() == before
