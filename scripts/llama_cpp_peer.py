"""The AR peer in llama.cpp: converted to GGUF, checked token for token, timed against ours.

Not part of the suite or CI: llama-cpp-python builds llama.cpp from source when it installs
(about 6 minutes of a 2-core CPU). How it is run:

    pip install gguf llama-cpp-python          # or: nice -n 19 pip install ... on a shared machine
    PYTHONPATH=src python scripts/llama_cpp_peer.py --threads 1 --rounds 7
    PYTHONPATH=src python scripts/llama_cpp_peer.py --gguf-only --out peer.gguf   # gguf alone

Conversion: the peer -> ``to_hf_gpt2`` (the project's Hugging Face conversion, as for
CTranslate2) -> a GGUF file of llama.cpp's ``gpt2`` architecture, written with the ``gguf``
package: GPT-2's ``Conv1D`` weights (in, out) are stored as (out, in), llama.cpp's layout;
the vocabulary is one token string per chunk id (``<0>`` .. ``<V-1>``, never tokenized: ids
go in and come out). ``f32`` keeps the weights; ``q8_0`` quantizes the matrices (blocks of
32 with one scale), the embeddings included, the norms and biases staying f32.

Generation keeps the project's window rule (GPT-2's learned positions end at the context):
a window is evaluated, tokens are sampled until it is full, then it is cut to its last
``keep_length(context)`` tokens and evaluated again. With greedy sampling the f32 model must
write our ``ARStream``'s tokens (printed: equal or the first difference). Timing: single
stream, ``--tokens`` chunks from a newline, temperature 0.8 over the whole vocabulary, our
``ARStream`` and end-to-end generate and llama.cpp f32 and q8_0 taking turns round after
round (``paired_ratio.py``'s method); medians of the per-round ratios are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fractal_flood.device import describe
from fractal_flood.manager.stream import ARStream
from fractal_flood.manager.window import keep_length
from fractal_flood.measure.bench import TEMPERATURE
from fractal_flood.measure.ct2_peer import token_name
from fractal_flood.sampling.tokens import SamplingConfig

from contestants import generator, load, quartiles  # noqa: E402  (scripts/ is on sys.path)

GGUF_TYPES = ("f32", "q8_0")


def write_gguf(peer, path: Path, kind: str = "f32") -> Path:
    """The peer as a GGUF file of llama.cpp's gpt2 architecture (f32 or q8_0 matrices)."""
    import gguf

    from fractal_flood.measure.hf_gpt2 import to_hf_gpt2

    cfg = peer.config
    if cfg.head_classes:
        raise SystemExit("llama_cpp_peer: the peer's output layer is class-factored; GPT-2 has one softmax")
    hf = to_hf_gpt2(peer).float().cpu()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("fractal-flood AR peer")
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(4 * cfg.d_model)
    w.add_block_count(cfg.n_layers)
    w.add_head_count(cfg.n_heads)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if kind == "f32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    V = cfg.vocab_size
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([token_name(i) for i in range(V)])
    w.add_token_types([gguf.TokenType.NORMAL] * V)
    w.add_token_merges([f"{token_name(0)} {token_name(1)}"])  # llama.cpp's BPE needs a merge list; no text is tokenized
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)

    def put(name: str, a: np.ndarray, matrix: bool = False):
        if kind == "q8_0" and matrix:
            qt = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)  # bytes; the writer derives the shape
        else:
            w.add_tensor(name, np.ascontiguousarray(a))

    put("token_embd.weight", sd["transformer.wte.weight"], matrix=True)
    put("position_embd.weight", sd["transformer.wpe.weight"])
    put("output_norm.weight", sd["transformer.ln_f.weight"])
    put("output_norm.bias", sd["transformer.ln_f.bias"])
    put("output.weight", sd["transformer.wte.weight"], matrix=True)  # tied, written once more
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"blk.{i}."
        for ours, theirs in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")]:
            put(b + theirs + ".weight", sd[h + ours + ".weight"])
            put(b + theirs + ".bias", sd[h + ours + ".bias"])
        for ours, theirs in [("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"), ("mlp.c_fc", "ffn_up"),
                             ("mlp.c_proj", "ffn_down")]:
            put(b + theirs + ".weight", sd[h + ours + ".weight"].T.copy(), matrix=True)  # Conv1D (in, out) -> (out, in)
            put(b + theirs + ".bias", sd[h + ours + ".bias"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class LlamaPeer:
    """A GGUF peer in llama-cpp-python, generating with the project's window rule."""

    def __init__(self, path: Path, context: int, threads: int, seed: int = 0):
        from llama_cpp import Llama

        self.context, self.keep = context, keep_length(context)
        self.llm = Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=threads,
                         n_threads_batch=threads, seed=seed, verbose=False)

    def generate(self, prompt: list, n: int, temperature: float) -> list:
        window, out = list(prompt[-self.context:]), []
        while len(out) < n:
            m = min(n - len(out), self.context + 1 - len(window))
            got = 0
            # top_k 0, top_p 1, min_p 0: the whole vocabulary; temperature 0: argmax
            for tok in self.llm.generate(window, top_k=0, top_p=1.0, min_p=0.0, temp=temperature,
                                         repeat_penalty=1.0, reset=True):
                out.append(tok)
                window.append(tok)
                got += 1
                if got == m:
                    break  # before the generator feeds it: the window may have no slot left
            if len(window) > self.context:
                window = window[-self.keep:]
        return out


@torch.no_grad()
def logit_gap(peer, prompt: list, written: list, ours: int, theirs: int) -> float:
    """Our model's logit of ``ours`` minus that of ``theirs`` after ``prompt`` and ``written``
    (in the window the window rule leaves): near 0 is a tie that rounding decides."""
    ctx = peer.config.context
    window = list(prompt[-ctx:])
    for t in written:
        window.append(t)
        if len(window) > ctx:
            window = window[-keep_length(ctx):]
    logits = peer(torch.tensor([window]))[0, -1]
    return float(logits[ours] - logits[theirs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=1, help="torch's and llama.cpp's threads")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=1024, help="chunks each peer writes per run")
    ap.add_argument("--roots", type=int, default=900, help="roots of our end-to-end generate per run")
    ap.add_argument("--check-tokens", type=int, default=300, help="greedy tokens compared with ARStream")
    ap.add_argument("--gguf-only", action="store_true", help="write the GGUF file (--out) and stop")
    ap.add_argument("--out", default="peer.gguf", help="with --gguf-only: the GGUF file")
    ap.add_argument("--type", choices=GGUF_TYPES, default="f32", help="with --gguf-only: f32 or q8_0 matrices")
    args = ap.parse_args()
    if args.rounds < 1 or args.threads < 1:
        ap.error("--rounds and --threads must be >= 1")
    need = ["gguf", "transformers"] + ([] if args.gguf_only else ["llama_cpp"])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"llama_cpp_peer: needs {', '.join(missing)}: pip install gguf transformers"
                 + ("" if args.gguf_only else " llama-cpp-python (builds llama.cpp, minutes)"))
    torch.set_num_threads(args.threads)
    m = load(args.model)
    if m.peer is None:
        sys.exit("llama_cpp_peer: the model directory has no AR peer")
    if args.gguf_only:
        print(write_gguf(m.peer, Path(args.out), args.type))
        return
    ctx = m.peer.config.context
    prompt = m.tokenizer.encode_chunks("\n")
    greedy = SamplingConfig(temperature=0)
    sampling = SamplingConfig(temperature=TEMPERATURE)
    with tempfile.TemporaryDirectory(prefix="fractal-flood-gguf-") as tmp:
        peers = {kind: LlamaPeer(write_gguf(m.peer, Path(tmp) / f"peer-{kind}.gguf", kind), ctx, args.threads)
                 for kind in GGUF_TYPES}
        stream = ARStream(m.peer, 1, greedy, "cpu", seed=0)
        stream.start(torch.tensor(prompt))
        ours = stream.generate(args.check_tokens)[0].tolist()
        for kind, p in peers.items():
            theirs = p.generate(prompt, args.check_tokens, 0.0)
            diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            line = f"greedy, {args.check_tokens} tokens: llama.cpp {kind} "
            if diff is None:
                print(line + "equals ARStream")
                continue
            print(line + f"differs from ARStream first at token {diff}, where our logits of the two "
                  f"choices are {logit_gap(m.peer, prompt, ours[:diff], ours[diff], theirs[diff]):.2g} apart")

        sampled = ARStream(m.peer, 1, sampling, "cpu", seed=0)

        def peer_run():
            sampled.start(torch.tensor(prompt))
            sampled.generate(args.tokens)
            return args.tokens

        e2e = generator(m, args.roots, sampling)
        runs = {"ours": lambda: e2e()[0], "peer": peer_run}
        runs.update({f"llama-{k}": (lambda p=p: len(p.generate(prompt, args.tokens, TEMPERATURE)))
                     for k, p in peers.items()})
        for run in runs.values():
            run()  # warm-up
        print(f"paired single-stream tokens/s on {describe(torch.device('cpu'))}, float32, torch {torch.__version__}, "
              f"llama.cpp at {args.threads} thread(s), {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        names = list(runs)
        ratios = {n: [] for n in names if n != "ours"}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            tps = {}
            for name in order:
                t0 = time.perf_counter()
                tokens = runs[name]()
                tps[name] = tokens / (time.perf_counter() - t0)
            for n in ratios:
                ratios[n].append(tps["ours"] / tps[n])
            print(f"round {r + 1:2d} ({' '.join(order)}): " + ", ".join(f"{n} {tps[n]:,.0f}" for n in names))
        for n, xs in ratios.items():
            print(f"ours (end-to-end) / {n} tokens/s: {quartiles(xs)}")
        for k in GGUF_TYPES:
            print(f"AR peer (ours) / llama-{k} tokens/s: "
                  f"{quartiles([b / a for a, b in zip(ratios['peer'], ratios[f'llama-{k}'])])}")


if __name__ == "__main__":
    main()
