"""Shared fixtures: the shipped corpus and tokenizers trained on it once per session."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

# The suite runs on pytest-xdist workers (pyproject's addopts: ``-n auto --dist loadfile``),
# one per usable core up to MAX_WORKERS. Every test file runs whole on one worker, so its
# module fixtures are built once; the files whose tests start big process trees (torchrun,
# a browser, a server under 32 clients) run as one unit, so they never run at the same time
# and the suite's peak memory stays that of one of them (``pytest_xdist_make_scheduler``). Each worker gets an equal share of the cores for its
# intra-op threads and the processes it starts (read when torch starts), and its OpenMP
# threads wait passively: a test that asks for two threads while the other worker runs
# would otherwise spin on its barriers (7x slower, measured).
MAX_WORKERS = 4
HEAVY_FILES = ("test_distributed.py", "test_playground_browser.py", "test_serve_e2e.py")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, _usable_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, with HEAVY_FILES scheduled as one unit (xdist's own
    ``xdist_group`` marks do not take under pytest 9: the node ids keep no group)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesWithHeavyTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "heavy-processes" if Path(path).name in HEAVY_FILES else path

    return FilesWithHeavyTogether(config, log)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per usable core, at most MAX_WORKERS (each worker holds its
    own trained fixtures: more would only add memory)."""
    return max(1, min(MAX_WORKERS, _usable_cores()))


from fractal_flood.corpus.reader import load_corpus  # noqa: E402 (after the environment above)
from fractal_flood.hierarchy.tokenizer import HierarchicalTokenizer  # noqa: E402

SMALL_CHARS = 60_000

# The compiled CPU step's default weights are bf16 (manager/cpu_step.py); the suite holds the
# compiled step to the eager step and the float32 references, which only the float32 step
# meets to their tolerances, so it runs float32 unless told otherwise. The int8 and bf16
# steps are held to the float32 step over their dequantised weights, and the default to
# batch invariance, in tests/test_weight_formats.py (which unsets this).
os.environ.setdefault("FRACTAL_FLOOD_CPU_WEIGHTS", "fp32")

# Without a GPU the fused step's Triton kernels run in Triton's interpreter
# (tests/test_fused_step.py). Triton reads TRITON_INTERPRET when it is first imported, so it
# is set here, before any test module can import it.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_configure(config):
    """``FRACTAL_FLOOD_MEMORY_REPORT=FILE``: sample the suite's memory (``_memory_watch``)."""
    path = os.environ.get("FRACTAL_FLOOD_MEMORY_REPORT")
    if path and not hasattr(config, "workerinput"):  # an xdist worker: the controller watches
        from _memory_watch import MemoryWatch

        config.pluginmanager.register(MemoryWatch(path), "memory-watch")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` on a machine without a CUDA GPU."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch  # only when some collected test needs it

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """The default corpus shipped inside the package (TinyShakespeare)."""
    return load_corpus()


@pytest.fixture(scope="session")
def small_text(corpus_text: str) -> str:
    """The first ~60,000 characters of the default corpus: enough for tiny models."""
    return corpus_text[:SMALL_CHARS]


@pytest.fixture(scope="session")
def tiny_tokenizer(small_text: str) -> HierarchicalTokenizer:
    """128 chunks, 192 roots: trains in well under a second."""
    return HierarchicalTokenizer.train(small_text, num_chunks=128, num_roots=192)


@pytest.fixture(scope="session")
def default_tokenizer(corpus_text: str) -> HierarchicalTokenizer:
    """Default sizes (1024 chunks, 2048 roots) on the full corpus: about 2 s."""
    return HierarchicalTokenizer.train(corpus_text)


# ---------------------------------------------------------------- trained tiny models
# Shared by test_training, test_checkpoint, test_decoders, test_pipeline and test_cli: the
# tiny preset is trained once per session (a few seconds to ~20 s on a 2-core CPU).

TINY_RENDERER_STEPS = 300
TINY_LM_STEPS = 60


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` intra-op threads. Tiny models gain nothing from more, and on a
    busy 2-core machine two spinning OpenMP threads make a tiny training step ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_thread():
    """Module-wide ``torch_threads(1)``: ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def small_corpus_file(small_text: str, tmp_path_factory) -> Path:
    """``small_text`` written to a UTF-8 file, for ``--corpus``."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(small_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_tiny(small_corpus_file, tmp_path_factory):
    """A model directory trained with preset ``tiny`` on ``small_text``: renderer
    (TINY_RENDERER_STEPS steps) and manager (TINY_LM_STEPS steps). Returns
    ``(model_dir, results of run_training)``."""
    import torch

    from fractal_flood.train.run import TrainOptions, run_training

    out = tmp_path_factory.mktemp("tiny_model")
    with torch_threads(1), torch.random.fork_rng():
        torch.manual_seed(0)  # model init draws from the global generator
        results = run_training(TrainOptions(
            out_dir=out, preset="tiny", corpus=str(small_corpus_file), parts=("renderer", "manager"),
            steps=TINY_RENDERER_STEPS, lm_steps=TINY_LM_STEPS, eval_every=TINY_RENDERER_STEPS,
            save_every=TINY_RENDERER_STEPS, progress=False, log=lambda s: None))
    return out, results


@pytest.fixture(scope="session")
def tiny_model_dir(trained_tiny):
    return trained_tiny[0]


@pytest.fixture(scope="session")
def tiny_trained_tokenizer(tiny_model_dir):
    from fractal_flood.models import checkpoint as ckpt

    return ckpt.load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_renderer(tiny_model_dir, tiny_trained_tokenizer):
    """The trained tiny renderer (float32, eval mode). Do not modify it in a test."""
    from fractal_flood.models import checkpoint as ckpt

    model, _ = ckpt.load_renderer(tiny_model_dir, tiny_trained_tokenizer)
    return model


@pytest.fixture(scope="session")
def shipped_tokenizer():
    from fractal_flood.models import checkpoint as ckpt

    return ckpt.load_tokenizer(ckpt.default_model_dir())


@pytest.fixture(scope="session")
def shipped_renderer(shipped_tokenizer):
    from fractal_flood.models import checkpoint as ckpt

    model, _ = ckpt.load_renderer(ckpt.default_model_dir(), shipped_tokenizer)
    return model
