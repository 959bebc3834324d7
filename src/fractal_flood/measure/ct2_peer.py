"""The AR peer run by CTranslate2, the inference engine a user would pick for a small GPT on
a CPU: the bench's external baseline.

Conversion goes through the project's own Hugging Face conversion: ``to_hf_gpt2`` gives a
``GPT2LMHeadModel`` with the peer's weights, which is saved with a word-level tokenizer
(one token string per chunk id, ``<0>`` .. ``<V-1>``) into a folder that CTranslate2's
``TransformersConverter`` reads like any local checkpoint. Nothing is downloaded. One
float32 conversion serves every compute type: CTranslate2 quantizes to int8 when it loads.

Generation keeps the project's window rule (``manager/window.py``): GPT-2's learned
positions end at the context, so once the window is full it is cut to its last
``keep_length(context)`` tokens and ``generate_batch`` starts again from them (the kept
tokens are prefilled at once, ``include_prompt_in_result=False``). No token ends a text
(``end_token=[]``): every row writes exactly the tokens asked for. With greedy sampling this
gives the same tokens as ``ARStream`` (a test checks it); sampled, CTranslate2 draws from
its own generator, so only the distribution, not the tokens, is the same.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from ..errors import FractalFloodError
from ..manager.window import keep_length
from ..models.causal_lm import CausalLM
from ..models.flops import block_flops, output_scores
from ..sampling.tokens import SamplingConfig

INSTALL_HINT = "pip install 'fractal-flood[engines]'"
COMPUTE_TYPES = ("float32", "int8")


def available() -> bool:
    """Whether CTranslate2 and transformers (its converter reads the HF model) are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("ctranslate2", "transformers"))


def require() -> None:
    """FractalFloodError (one line) unless the engine rows can run."""
    missing = [m for m in ("ctranslate2", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise FractalFloodError(f"the CTranslate2 rows need {' and '.join(missing)}, not installed: {INSTALL_HINT}")


def token_name(i: int) -> str:
    """The token string of chunk id ``i`` in the converted model's vocabulary."""
    return f"<{i}>"


def convertible(model: CausalLM) -> Optional[str]:
    """None, or why this model has no CTranslate2 form (a class-factored output layer)."""
    if model.config.head_classes:
        return (f"its output layer is class-factored ({model.config.head_classes} classes); GPT-2, and so "
                "CTranslate2's GPT-2 loader, has one softmax over the vocabulary")
    return None


def convert(model: CausalLM, out_dir) -> Path:
    """Write ``model`` (fp32 weights) as a CTranslate2 model folder ``out_dir``; -> its path."""
    why = convertible(model)
    if why:
        raise FractalFloodError(f"cannot convert the model to CTranslate2: {why}")
    require()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every file is local; never ask the hub
    import ctranslate2
    import transformers
    from tokenizers import Tokenizer, models

    from .hf_gpt2 import to_hf_gpt2

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cpu = CausalLM(model.config)
    cpu.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
    hf = to_hf_gpt2(cpu.eval())
    V = model.config.vocab_size
    vocab = {token_name(i): i for i in range(V)}
    # the special tokens must name vocabulary entries; end_token=[] at generation keeps
    # <0> from ending a text
    special = token_name(0)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=special)),
                                               unk_token=special, bos_token=special, eos_token=special)
    with tempfile.TemporaryDirectory(prefix="fractal-flood-hf-") as hf_dir:
        hf.save_pretrained(hf_dir)
        tok.save_pretrained(hf_dir)
        out = ctranslate2.converters.TransformersConverter(hf_dir).convert(str(out_dir), force=True)
    return Path(out)


class CT2Peer:
    """A converted peer loaded by ``ctranslate2.Generator`` on the CPU, in one compute type
    (``float32`` or ``int8``) with ``threads`` intra-op threads."""

    def __init__(self, model_dir, context: int, compute_type: str = "float32", threads: int = 1,
                 seed: int = 0):
        require()
        import ctranslate2

        if compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute_type must be one of {COMPUTE_TYPES}, got {compute_type!r}")
        self.ct2 = ctranslate2
        self.compute_type, self.threads, self.context = compute_type, threads, context
        self.keep = keep_length(context)
        # CTranslate2 seeds each worker thread's generator once, at its first draw, from the
        # global seed: a fresh engine's draws repeat; one run's draws follow the previous run's
        ctranslate2.set_random_seed(seed)
        torch_threads = torch.get_num_threads()
        self.generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=compute_type,
                                               intra_threads=threads, inter_threads=1)
        # loading sets the calling thread's OpenMP thread count to ``threads``, which is
        # torch's too; the engine's own worker keeps its setting
        torch.set_num_threads(torch_threads)
        self.calls = 0  # generate_batch calls (each one prefill)

    def generate(self, prompts: list, n: int, sampling: SamplingConfig) -> list:
        """The next ``n`` chunk ids after each prompt (lists of ids, all of one length) ->
        list of lists. Greedy (temperature 0) is an argmax; otherwise CTranslate2 samples at
        the temperature from the top-k (0: the whole vocabulary).

        Equal lengths, because ``generate_batch`` prefills a batch only up to its shortest
        prompt and writes the rest of a longer one inside its ``max_length``; left-pad
        prompts with newline chunks (``pad_prompts``) to batch texts that differ."""
        if not prompts or not prompts[0] or any(len(p) != len(prompts[0]) for p in prompts):
            raise ValueError("prompts must be non-empty and of one length (see pad_prompts)")
        if sampling.top_p is not None and sampling.top_p < 1:
            raise ValueError("top-p is not mapped to CTranslate2 here")
        if sampling.greedy:
            draw = {"sampling_topk": 1}
        else:
            draw = {"sampling_topk": int(sampling.top_k or 0), "sampling_temperature": float(sampling.temperature)}
        windows = [[token_name(i) for i in p[-self.context:]] for p in prompts]
        out = [[] for _ in prompts]
        while len(out[0]) < n:
            m = min(n - len(out[0]), self.context + 1 - len(windows[0]))
            res = self.generator.generate_batch(windows, max_length=m, include_prompt_in_result=False,
                                                end_token=[], **draw)
            self.calls += 1
            for j, (o, r) in enumerate(zip(out, res)):
                new = r.sequences_ids[0]
                if len(new) != m:
                    raise RuntimeError(f"CTranslate2 wrote {len(new)} tokens, not {m}")
                o += new
                w = windows[j] + [token_name(i) for i in new]
                windows[j] = w[-self.keep:] if len(w) > self.context else w
        return out

    def heldout_loss(self, ids: torch.Tensor, max_windows: int = 64) -> float:
        """Mean next-token loss (nats) of this engine over the windows ``metrics.heldout_loss``
        scores: non-overlapping windows of ``context + 1`` held-out ids, each predicting its
        last ``context`` (``score_batch`` returns their log-probabilities)."""
        T = min(self.context, len(ids) - 1)
        n = min(max_windows, (len(ids) - 1) // T)
        if n < 1:
            raise FractalFloodError(f"the held-out text is {len(ids)} token(s) long: a loss needs at least 2")
        flat = ids.tolist()
        windows = [[token_name(i) for i in flat[s * T:s * T + T + 1]] for s in range(n)]
        res = self.generator.score_batch(windows, max_batch_size=32, max_input_length=0)
        lps = [lp for r in res for lp in r.log_probs]
        if len(lps) != n * T:
            raise RuntimeError(f"CTranslate2 scored {len(lps)} tokens, not {n * T}")
        return -math.fsum(lps) / len(lps)


def pad_prompts(prompts: list, pad: int) -> list:
    """Prompts (lists of ids) left-padded with ``pad`` (the newline chunk: a text that starts
    after blank lines) to the longest one's length, so one ``generate`` call batches them."""
    L = max(map(len, prompts))
    return [[pad] * (L - len(p)) + list(p) for p in prompts]


def windowed_work(prompt_len: int, steps: int, context: int) -> tuple[int, int, int]:
    """-> (generate_batch calls, positions computed, attended (query, key) pairs) per
    sequence for ``CT2Peer.generate``: each call prefills its window but the last token, then
    decodes, each position attending over the keys before it and itself (a dynamic cache)."""
    keep = keep_length(context)
    L, done, calls, positions, pairs = min(prompt_len, context), 0, 0, 0, 0
    while done < steps:
        m = min(steps - done, context + 1 - L)
        calls += 1
        positions += L - 1 + m
        pairs += (L - 1) * L // 2 + sum(range(L, L + m))  # prefill 1..L-1, then L..L+m-1
        done += m
        L += m
        if L > context:
            L = keep
    return calls, positions, pairs


def ct2_flops(config, batch: int, prompt_len: int, steps: int) -> int:
    """Matrix FLOPs of a ``CT2Peer.generate`` run: every computed position through the blocks,
    the output layer once per written token."""
    _, positions, pairs = windowed_work(prompt_len, steps, config.context)
    return (block_flops(config.d_model, config.n_layers, batch * positions, batch * pairs)
            + 2 * config.d_model * output_scores(config) * batch * steps)
