"""Training of the three model parts on one corpus: the renderer (both levels interleaved,
denoising + energy), the manager (next root) and the AR peer (next chunk, the bench's
baseline). One loop serves all three: AdamW, warm-up then cosine decay, bf16 autocast on a
GPU, a progress bar with the loss, a validation line every ``eval_every`` steps, and an
atomic checkpoint every ``save_every`` steps that ``resume=True`` continues from.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed
from . import shards as shards_mod
from .causal_lm import DECAY_MODES, CausalLM
from .config import CausalLMConfig, Preset, RendererConfig, get_preset
from .corpus import open_corpus
from .errors import FractalFloodError, UnknownCharacterError
from .level_specs import format_specs
from .lm_task import LMTask, lm_optimizer
from .pairs import TokenStream
from .renderer import FractalDiffusionModel
from .renderer_task import RendererTask
from .tokenizer import HierarchicalTokenizer
from .train_state import STATE_DIR, restore_state, save_state, state_path

ALL_PARTS = ("renderer", "manager", "peer")
# the tokenizer learns its merges from the first this-many characters of the corpus (all of
# the shipped one): enough text for 1,024 + 2,048 merges, and a bound on its memory
TOKENIZER_SAMPLE_CHARS = 8_000_000


@dataclass
class TrainOptions:
    out_dir: Path
    preset: str = "seed"
    corpus: str | None = None  # a file, a directory or a glob; None is the shipped corpus
    levels: list | None = None  # the tokenizer's BPE levels, top first (level_specs); None: the preset's
    parts: tuple = ("renderer", "manager")
    steps: int | None = None  # renderer steps (preset default if None)
    lm_steps: int | None = None  # manager / peer steps
    batch: int | None = None  # the global batch, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per step and process
    tokenizer_chars: int = TOKENIZER_SAMPLE_CHARS  # the tokenizer learns its merges from these
    time_limit: float | None = None  # seconds per part; caps the steps after a timing run
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    eval_every: int = 200
    save_every: int = 500
    progress: bool = True
    log: Callable[[str], None] = field(default=print)
    # the language models' regularisation for this run (None: the preset's)
    dropout: float | None = None
    weight_decay: float | None = None
    decay: str | None = None


def run_training(opts: TrainOptions) -> dict:
    """Train the tokenizer (or reuse the directory's) and each asked-for part; under
    ``torchrun``, data parallel over its processes (see :mod:`distributed`)."""
    preset = get_preset(opts.preset)
    for p in opts.parts:
        if p not in ALL_PARTS:
            raise FractalFloodError(f"unknown part {p!r} (choose from: {', '.join(ALL_PARTS)})")
    for name in ("steps", "lm_steps", "batch", "grad_accum", "tokenizer_chars", "eval_every", "save_every"):
        v = getattr(opts, name)
        if v is not None and v < 1:
            raise FractalFloodError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if opts.dropout is not None and not 0 <= opts.dropout < 1:
        raise FractalFloodError(f"--dropout must be in [0, 1), got {opts.dropout}")
    if opts.weight_decay is not None and not opts.weight_decay >= 0:
        raise FractalFloodError(f"--weight-decay must be >= 0, got {opts.weight_decay}")
    if opts.decay is not None and opts.decay not in DECAY_MODES:
        raise FractalFloodError(f"unknown --decay {opts.decay!r} (choose from: {', '.join(DECAY_MODES)})")
    corpus = open_corpus(opts.corpus)
    with distributed.session(opts.device) as ctx:
        if not ctx.is_main:
            opts = replace(opts, log=lambda line: None, progress=False)
        opts.log(f"training on {ctx.device}, {ctx.describe()}")
        tokenizer = _tokenizer(corpus, preset, opts, ctx)
        shards = _shards(corpus, tokenizer, opts, ctx) if set(opts.parts) & {"manager", "peer"} else None
        results = {}
        for part in opts.parts:
            results[part] = _train_part(part, tokenizer, shards, preset, opts, ctx)
            distributed.barrier(ctx)  # no rank starts the next part before rank 0 has saved
        return results


def _tokenizer(corpus, preset: Preset, opts: TrainOptions, ctx) -> HierarchicalTokenizer:
    """Rank 0 trains (from a streamed sample of the corpus) or reuses the directory's
    tokenizer; the other ranks read what it wrote."""
    out = Path(opts.out_dir)
    tok_path = out / ckpt.TOKENIZER_FILE
    if ctx.is_main:
        if tok_path.exists():
            tokenizer = ckpt.load_tokenizer(out)
            _check_alphabet(corpus, tokenizer)  # the corpus must fit it
            if opts.levels is not None and not tokenizer.built_from(opts.levels):
                raise FractalFloodError(f"{tok_path} has the levels {format_specs(tokenizer.levels)}, not "
                                        f"{format_specs(opts.levels)}: train into a new --out")
            opts.log(f"tokenizer: reusing {tok_path}")
        elif opts.resume:
            raise FractalFloodError(f"nothing to resume in {out}: it has no {ckpt.TOKENIZER_FILE}")
        else:
            t0 = time.perf_counter()
            try:  # merges from the first tokenizer_chars; every character of the corpus
                tokenizer = HierarchicalTokenizer.train(corpus.lines(opts.tokenizer_chars), preset.num_chunks,
                                                        preset.num_roots, levels=opts.levels,
                                                        alphabet=corpus.alphabet())
            except ValueError as e:
                raise FractalFloodError(f"cannot train the tokenizer on {corpus.spec}: {e}") from None
            ckpt.save_tokenizer(out, tokenizer)
            opts.log(f"tokenizer: trained in {time.perf_counter() - t0:.1f}s -> {tokenizer}")
    distributed.barrier(ctx)
    return ckpt.load_tokenizer(out)


def _check_alphabet(corpus, tokenizer: HierarchicalTokenizer) -> None:
    """Raise :class:`UnknownCharacterError` at the corpus's first character outside the
    tokenizer's alphabet (one streamed pass)."""
    seen = 0
    for block in corpus.blocks():
        try:
            tokenizer.check_text(block)
        except UnknownCharacterError as e:
            raise UnknownCharacterError(e.char, seen + e.position) from None
        seen += len(block)


def _shards(corpus, tokenizer, opts: TrainOptions, ctx) -> dict:
    """The corpus as memory-mapped token shards: rank 0 checks or builds the cache, then
    every rank maps it."""
    cache = shards_mod.cache_dir_for(opts.out_dir)
    tok_file = Path(opts.out_dir) / ckpt.TOKENIZER_FILE
    if ctx.is_main:
        shards_mod.load_or_build(corpus, tokenizer, tok_file, cache,
                             progress=opts.progress, log=opts.log)
    distributed.barrier(ctx)
    mapped = shards_mod.open_shards(cache)
    if mapped is None:
        raise FractalFloodError(f"cannot read the token shards in {cache} (is it on a filesystem every "
                                "node sees?)")
    return mapped


@dataclass
class PartRun:
    """One part ready to train: its model, task, optimizer, generator and schedule."""
    part: str
    model: torch.nn.Module
    task: object  # RendererTask or LMTask: draw(), loss(batch, piece, pieces), validate(), improved(), best
    opt: torch.optim.Optimizer
    gen: torch.Generator
    steps: int
    lr: float  # peak learning rate of the schedule
    start: int = 0


def _train_part(part, tokenizer, shards, preset: Preset, opts: TrainOptions, ctx) -> dict:
    run = _build_part(part, tokenizer, shards, preset, opts, ctx.device)
    _resume_part(run, opts)
    return _train_loop(run, preset, opts, ctx)


def _build_part(part, tokenizer, shards, preset: Preset, opts: TrainOptions, device) -> PartRun:
    """The model (seeded init), its task and optimizer, on ``device``. Every rank seeds the
    same way: the same initial weights and the same stream of global batches."""
    # the renderer samples its pairs on the device; the LMs cut windows from a CPU stream
    gen = torch.Generator(device=device if part == "renderer" else "cpu")
    gen.manual_seed(opts.seed + ALL_PARTS.index(part))
    torch.manual_seed(opts.seed + ALL_PARTS.index(part))  # weight init: same seed, same model
    if part == "renderer":
        cfg = RendererConfig(levels=[lv.to_dict() for lv in tokenizer.levels],
                             **preset.renderer)
        model = FractalDiffusionModel(cfg)
        task = RendererTask(model, tokenizer, opts.batch or preset.renderer_batch, preset.energy_weight, device, gen)
        steps = opts.steps or preset.renderer_steps
    else:
        if part == "manager":
            ids, extra = shards["roots"], preset.manager
            vocab = tokenizer.num_roots
            lengths = [len(tokenizer.root_text(i)) for i in range(tokenizer.num_roots)]
        else:
            ids, extra = shards["chunks"], preset.peer
            vocab = tokenizer.num_chunks
            lengths = [len(tokenizer.spell(i)) for i in range(tokenizer.num_chunks)]
        if opts.dropout is not None:
            extra = {**extra, "dropout": opts.dropout}
        model = CausalLM(CausalLMConfig(vocab_size=vocab, **extra))
        stream = TokenStream.split(ids)
        if len(stream.train) < 2 or len(stream.val) < 2:
            raise FractalFloodError(f"corpus too short to train the {part}: {len(ids)} tokens; give it more text")
        # bits per char of the held-out text itself
        val_chars = shards_mod.token_chars(stream.val, torch.tensor(lengths))
        task = LMTask(model, stream, opts.batch or preset.lm_batch, device, gen, val_chars)
        steps = opts.lm_steps or (preset.manager_steps if part == "manager" else preset.peer_steps)
    model.to(device)
    lr = (preset.renderer_lr or preset.lr) if part == "renderer" else preset.lr
    if part == "renderer":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    else:
        optim = dict(preset.manager_optim if part == "manager" else preset.peer_optim)
        optim.update({k: v for k, v in (("weight_decay", opts.weight_decay), ("decay", opts.decay))
                      if v is not None})
        opt = lm_optimizer(model, lr, **optim)
        opts.log(f"{part}: dropout {model.config.dropout:g}, weight decay {optim['weight_decay']:g} "
                 f"on {optim['decay']}")
    return PartRun(part, model, task, opt, gen, steps, lr)


def _resume_part(run: PartRun, opts: TrainOptions) -> None:
    """With ``--resume``, continue from the part's saved state when it has one (every rank
    loads the same file)."""
    path = state_path(opts.out_dir, run.part)
    if opts.resume and path.exists():
        run.start, run.steps, best = restore_state(path, run.model, run.opt, run.gen, run.part)
        run.task.best = best
        opts.log(f"{run.part}: resuming from step {run.start} of {run.steps}")
    elif opts.resume:
        opts.log(f"{run.part}: no saved state in {path.parent}, starting from step 0")


def _train_loop(run: PartRun, preset: Preset, opts: TrainOptions, ctx) -> dict:
    part, model, task, opt, gen = run.part, run.model, run.task, run.opt, run.gen
    start, steps, device, accum = run.start, run.steps, ctx.device, opts.grad_accum
    pieces = ctx.world_size * accum  # the global batch is cut into this many equal micro-batches
    loss_of = distributed.data_parallel(ctx, model, task.loss)
    opts.log(f"{part}: {model.num_params() / 1e6:.2f}M parameters, {steps} steps on {device}, "
             f"{ctx.world_size} process(es) x {accum} micro-batch(es) per step")
    use_bf16 = device.type == "cuda"
    bar = tqdm(range(start, steps), desc=part, disable=not opts.progress, initial=start, total=steps,
               dynamic_ncols=True)
    last = {}
    t0 = time.perf_counter()
    # --time-limit: time steps 10..40 (after warm-up), then cap the schedule to fit
    probe_from, probe_to, t_probe = start + 10, start + 40, None
    for step in bar:
        if step >= steps:
            break
        if opts.time_limit and start == 0 and step in (probe_from, probe_to):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == probe_from:
                t_probe = time.perf_counter()
        if opts.time_limit and start == 0 and step == probe_to:
            per_step = (time.perf_counter() - t_probe) / (probe_to - probe_from)
            fit = int((opts.time_limit - (time.perf_counter() - t0)) / per_step) + step
            fit = distributed.broadcast_int(ctx, fit)  # every rank runs rank 0's schedule
            if fit < steps:
                opts.log(f"{part}: {per_step * 1000:.0f} ms/step, --time-limit {opts.time_limit:.0f}s "
                         f"caps the run at {fit} of {steps} steps")
                steps = max(fit, step + 1)
                bar.total = steps
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, run.lr)
        model.train()
        batch = task.draw()  # the global batch, the same on every rank; each takes its pieces
        opt.zero_grad(set_to_none=True)
        logs = {}
        for micro in range(accum):
            with distributed.sync_gradients(loss_of, last_micro_step=micro == accum - 1):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, micro_logs = loss_of(batch, ctx.rank * accum + micro, pieces)
                (loss / accum).backward()
            for k, v in micro_logs.items():
                logs[k] = logs.get(k, 0) + v / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            logs = distributed.mean_over_ranks(ctx, logs)
            bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items()}, refresh=False)
        done = step + 1
        if ctx.is_main and (done % opts.eval_every == 0 or done == steps):
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                last = task.validate()
            line = " ".join(f"{k}={v:.4f}" for k, v in last.items())
            (bar.write if opts.progress else opts.log)(f"{part} step {done}: {line}")
            if task.improved(last):  # the LMs keep their best held-out checkpoint
                ckpt.save_part(Path(opts.out_dir), part, model,
                               extra={"step": done, "total_steps": steps, "preset": opts.preset,
                                      "metrics": {k: float(v) for k, v in last.items()}})
        if ctx.is_main and (done % opts.save_every == 0 or done == steps):
            save_state(opts.out_dir, part, model, opt, gen, done, steps, opts.preset, task.best)
    seconds = time.perf_counter() - t0
    opts.log(f"{part}: done, {steps - start} steps in {seconds:.1f}s -> {opts.out_dir}")
    return {"steps": steps, "seconds": seconds, **last}


def _lr(step: int, total: int, peak: float) -> float:
    warm = min(100, max(1, total // 10))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
