"""Training of the three model parts on one corpus: the renderer (both levels interleaved,
denoising + energy), the manager (next root) and the AR peer (next chunk, the bench's
baseline). One loop serves all three: AdamW, warm-up then cosine decay, bf16 autocast on a
GPU, a progress bar with the loss, a validation line every ``eval_every`` steps, and an
atomic checkpoint every ``save_every`` steps that ``resume=True`` continues from.

A model directory belongs to one run: a lock file keeps a second writer out, and training
a part the directory already holds needs ``resume`` (continue it) or ``overwrite`` (start
the directory afresh). Every part's data is checked before the first one trains, a time
limit bounds the whole run (each part refits its schedule to its share while it runs), a
part that ends below its validation bar says so, and a Ctrl-C (or the CLI's SIGTERM) saves
the state of the part in progress first.

The language models read random windows from the corpus tokenized once into memory-mapped
shards (:mod:`shards`), so memory does not grow with the corpus. Under ``torchrun`` the loop
runs data parallel (:mod:`distributed`): each step every rank draws the same global batch
and computes the loss of its own piece (``--grad-accum`` pieces per rank), DDP averages the
gradients, and rank 0 alone prints, validates and writes.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from ..corpus import shards as shards_mod
from ..corpus.reader import open_corpus
from ..corpus.streams import TokenStream
from ..device import resolve_device
from ..errors import FractalFloodError, UnknownCharacterError
from ..fileio import DirectoryLock, file_sha256
from ..hierarchy.level_specs import check_specs, default_specs, format_specs
from ..hierarchy.tokenizer import HierarchicalTokenizer
from ..models import checkpoint as ckpt
from ..models.causal_lm import DECAY_MODES, CausalLM
from ..models.config import (TOKENIZER_SAMPLE_CHARS, CausalLMConfig, Preset, RendererConfig, check_classes,
                             get_preset)
from ..models.renderer import FractalDiffusionModel
from . import distributed
from .lm_task import LMTask, lm_optimizer
from .renderer_task import RendererTask
from .state import STATE_DIR, has_state, restore_state, save_state

ALL_PARTS = ("renderer", "manager", "peer")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_preset(device: torch.device) -> str:
    """The preset a run without one trains: ``seed`` (the plan's sizes) on a GPU, ``small``
    (the shipped model's sizes, minutes on a CPU) anywhere else."""
    return "seed" if torch.device(device).type == "cuda" else "small"


@dataclass
class TrainOptions:
    out_dir: Path
    preset: str | None = None  # None: the preset of the parts the directory holds, else default_preset
    corpus: str | None = None  # a file, a directory or a glob; None is the shipped corpus
    levels: list | None = None  # the tokenizer's BPE levels, top first (level_specs); None: the preset's
    parts: tuple = ("renderer", "manager")
    steps: int | None = None  # renderer steps (preset default if None)
    lm_steps: int | None = None  # manager / peer steps
    batch: int | None = None  # the global batch, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per step and process
    tokenizer_chars: int = TOKENIZER_SAMPLE_CHARS  # the tokenizer learns its merges from these
    time_limit: float | None = None  # seconds for the whole run, shared by the parts
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False  # replace the model in out_dir (tokenizer, parts, state)
    seed: int = 0
    eval_every: int = 200
    save_every: int = 500
    progress: bool = True
    log: Callable[[str], None] = field(default=print)
    warn: Callable[[str], None] = field(default=_to_stderr)  # a part below its bar: one line
    keep_below_bar: bool = False  # a part below its validation bar is accepted (the CLI exits 0)
    # the language models' regularisation for this run (None: the preset's)
    dropout: float | None = None
    head_classes: int | str | None = None  # the manager's output layer (None: the preset's)
    top_lengths: bool = False  # the renderer predicts each root's children: a packed top level
    lm_shape: tuple | None = None  # (layers, width, heads) of the manager and peer (None: the preset's)
    weight_decay: float | None = None
    decay: str | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """A Ctrl-C during training, after the part in progress saved its state."""


def run_training(opts: TrainOptions) -> dict:
    """Train the tokenizer (or reuse the directory's) and each asked-for part; under
    ``torchrun``, data parallel over its processes (see :mod:`distributed`).

    -> ``{part: {"steps", "seconds", validation metrics...}}``; a part that ended below its
    validation bar (its task's ``below_bar``: render fidelity 99.9% at every level for the
    renderer, a held-out loss that improved on its first evaluation for the language models)
    also has ``"below_bar"``, the reason, which was logged and warned (one line each)."""
    t_start = time.perf_counter()
    opts, preset_note = _with_preset(opts)
    preset = get_preset(opts.preset)
    _check_options(opts)
    corpus = open_corpus(opts.corpus)
    with distributed.session(opts.device) as ctx, _own_directory(opts, ctx):
        if not ctx.is_main:
            opts = replace(opts, log=lambda line: None, warn=lambda line: None, progress=False)
        opts.log(f"training on {ctx.device}, {ctx.describe()}")
        if preset_note:
            opts.log(preset_note)
        depth = _depth(preset, opts)
        for part in opts.parts:  # every part's batch splits into its micro-batches
            _check_batch(part, depth, preset, opts, ctx.world_size)
        tokenizer = _tokenizer(corpus, preset, opts, ctx)
        tok_sha = file_sha256(Path(opts.out_dir) / ckpt.TOKENIZER_FILE)
        shards = _shards(corpus, tokenizer, opts, ctx) if set(opts.parts) & {"manager", "peer"} else None
        for part in opts.parts:  # every part's data, before the first one trains
            if part != "renderer":
                _lm_stream(part, shards)
        results = {}
        for i, part in enumerate(opts.parts):
            deadline = None
            if opts.time_limit:  # the time left, shared evenly by the parts still to train
                left = opts.time_limit - (time.perf_counter() - t_start)
                share = max(0.0, left) / (len(opts.parts) - i)
                deadline = time.perf_counter() + share
                opts.log(f"{part}: {share:.1f}s of the {opts.time_limit:g}s --time-limit")
            results[part] = _train_part(part, tokenizer, shards, preset, opts, ctx, deadline, tok_sha)
            distributed.barrier(ctx)  # no rank starts the next part before rank 0 has saved
        return results


def _with_preset(opts: TrainOptions) -> tuple[TrainOptions, str | None]:
    """``opts`` with its preset named, and a line saying why when it was not asked for: the
    preset of the parts the directory already holds (continued or extended), else the
    device's (:func:`default_preset`)."""
    if opts.preset is not None:
        return opts, None
    held = None if opts.overwrite else _held_preset(Path(opts.out_dir))
    if held is not None:
        return replace(opts, preset=held), f"preset {held}: the one {opts.out_dir} was trained with"
    name = default_preset(resolve_device(opts.device))
    where = "a GPU" if name == "seed" else "a CPU"
    return replace(opts, preset=name), f"preset {name}: the default on {where} (--preset picks another)"


def _held_preset(out: Path) -> str | None:
    """The preset recorded by the first part (or its training state) found in ``out``."""
    for part in ALL_PARTS:
        for path in (out / STATE_DIR / f"{part}.json", out / f"{part}.json"):
            try:
                name = json.loads(path.read_text(encoding="utf-8")).get("preset")
            except (OSError, ValueError, AttributeError):
                continue  # missing or unreadable: loading it later says which
            if isinstance(name, str):
                try:
                    get_preset(name)
                except ValueError:
                    continue
                return name
    return None


def _depth(preset: Preset, opts: TrainOptions) -> int:
    """The expanding levels the run's tokenizer has (or will have)."""
    if opts.levels:
        return len(opts.levels)
    if not opts.overwrite and (Path(opts.out_dir) / ckpt.TOKENIZER_FILE).exists():  # the one it reuses
        return ckpt.load_tokenizer(opts.out_dir).depth
    return len(default_specs(preset.num_chunks, preset.num_roots))


def _check_batch(part: str, levels: int, preset: Preset, opts: TrainOptions, world_size: int) -> None:
    """Refuse, naming the user's numbers, a global batch that does not split into equal
    micro-batches (processes x --grad-accum). The renderer splits each level's share of the
    batch, and the first half of that share (its energy pairs), so it needs a multiple of
    2 x levels x micro-batches."""
    pieces = world_size * opts.grad_accum
    if pieces == 1:
        return
    if part == "renderer":
        batch = opts.batch or preset.renderer_batch
        per_level = max(2, batch // levels)
        ok = per_level % pieces == 0 and (per_level // 2) % pieces == 0
        unit = 2 * levels * pieces
    else:
        batch = opts.batch or preset.lm_batch
        ok, unit = batch % pieces == 0, pieces
    if ok:
        return
    how = f"{world_size} processes x --grad-accum {opts.grad_accum}" if world_size > 1 else \
        f"--grad-accum {opts.grad_accum}"
    given = f"--batch {batch}" if opts.batch else f"the {preset.name} preset's batch of {batch}"
    why = (f": each of its {levels} levels gets {per_level} items, {per_level // 2} of them paired for the "
           "energy, and each group is split" if part == "renderer" else "")
    raise FractalFloodError(f"{part}: {given} does not split into {pieces} equal pieces ({how}){why}; "
                            f"give a --batch that is a multiple of {unit}")


def _check_options(opts: TrainOptions) -> None:
    for p in opts.parts:
        if p not in ALL_PARTS:
            raise FractalFloodError(f"unknown part {p!r} (choose from: {', '.join(ALL_PARTS)})")
    if not opts.parts:
        raise FractalFloodError(f"no part to train (choose from: {', '.join(ALL_PARTS)})")
    if len(set(opts.parts)) != len(opts.parts):
        raise FractalFloodError(f"a part is named twice in {','.join(opts.parts)}")
    for name in ("steps", "lm_steps", "batch", "grad_accum", "tokenizer_chars", "eval_every", "save_every"):
        v = getattr(opts, name)
        if v is not None and (type(v) is not int or v < 1):
            raise FractalFloodError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
    if opts.time_limit is not None and not (opts.time_limit > 0 and math.isfinite(opts.time_limit)):
        raise FractalFloodError(f"--time-limit must be a finite number of seconds > 0, got {opts.time_limit}")
    if opts.resume and opts.overwrite:
        raise FractalFloodError("--resume continues the model in --out, --overwrite replaces it: choose one")
    if opts.dropout is not None and not 0 <= opts.dropout < 1:
        raise FractalFloodError(f"--dropout must be in [0, 1), got {opts.dropout}")
    if opts.head_classes not in (None, "auto"):
        preset = get_preset(opts.preset)
        top = (check_specs(opts.levels) if opts.levels else default_specs(preset.num_chunks, preset.num_roots))[0]
        try:
            check_classes(top.size, opts.head_classes)
        except ValueError as e:
            raise FractalFloodError(f"--head-classes: {e}") from None
    if opts.lm_shape is not None:
        shape = opts.lm_shape
        if (not isinstance(shape, tuple) or len(shape) != 3 or any(type(v) is not int or v < 1 for v in shape)
                or shape[1] % shape[2]):
            raise FractalFloodError(f"--lm-shape must be (layers, width, heads) of integers >= 1 with the "
                                    f"width a multiple of the heads, got {shape}")
    if opts.weight_decay is not None and not 0 <= opts.weight_decay < float("inf"):
        raise FractalFloodError(f"--weight-decay must be a finite number >= 0, got {opts.weight_decay}")
    if opts.decay is not None and opts.decay not in DECAY_MODES:
        raise FractalFloodError(f"unknown --decay {opts.decay!r} (choose from: {', '.join(DECAY_MODES)})")


@contextmanager
def _own_directory(opts: TrainOptions, ctx):
    """Rank 0 creates ``out_dir``, holds its lock for the run and refuses to replace a
    trained part silently (with ``overwrite``, it clears the directory first)."""
    if not ctx.is_main:
        yield
        return
    out = Path(opts.out_dir)
    if out.exists() and not out.is_dir():
        raise FractalFloodError(f"--out {out} is a file, not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FractalFloodError(f"cannot create the model directory {out}: {e.strerror or e}") from None
    try:
        with DirectoryLock(out, opts.log):
            _claim(out, opts)
            yield
    except BaseException:
        if created and not any(out.iterdir()):  # a run that failed before writing anything
            out.rmdir()
        raise


def _claim(out: Path, opts: TrainOptions) -> None:
    held = [p for p in ALL_PARTS if (out / f"{p}.json").exists() or has_state(out, p)]
    if opts.overwrite:
        removed = [n for n in [ckpt.TOKENIZER_FILE] + [f"{p}.{ext}" for p in ALL_PARTS
                                                        for ext in ("json", "safetensors")]
                   if (out / n).is_file()]
        for n in removed:
            (out / n).unlink()
        if (out / STATE_DIR).is_dir():
            shutil.rmtree(out / STATE_DIR)
            removed.append(STATE_DIR + "/")
        if removed:
            opts.log(f"--overwrite: removed {', '.join(removed)} from {out}")
        return
    clash = [p for p in opts.parts if p in held]
    if clash and not opts.resume:
        raise FractalFloodError(f"{out} already holds a trained {' and '.join(clash)}: pass --resume to "
                                "continue it or --overwrite to replace the model")


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
                                                        alphabet=corpus.alphabet(), progress=opts.log)
            except ValueError as e:
                raise FractalFloodError(f"cannot train the tokenizer on {corpus.spec}: {e}") from None
            _check_merges(tokenizer, corpus, opts.tokenizer_chars)
            ckpt.save_tokenizer(out, tokenizer)
            opts.log(f"tokenizer: trained in {time.perf_counter() - t0:.1f}s -> {tokenizer}")
    distributed.barrier(ctx)
    return ckpt.load_tokenizer(out)


def _check_merges(tokenizer: HierarchicalTokenizer, corpus, sample_chars: int) -> None:
    """Refuse a tokenizer with a level that learned no merge (its tokens are the level
    below's): its roots would be single characters, which the parts cannot learn from."""
    levels = tokenizer.levels
    for upper, lower in reversed(list(zip(levels, levels[1:]))):  # the lowest level first
        if upper.size <= lower.size:
            raise FractalFloodError(
                f"the tokenizer learned no merges at level {upper.name!r} ({upper.size} tokens, as many as the "
                f"{lower.name} below it) from the lines up to character {sample_chars:,} of {corpus.spec} "
                f"(--tokenizer-chars {sample_chars}): give it more text (default {TOKENIZER_SAMPLE_CHARS:,})")


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
    deadline: Optional[float] = None  # time.perf_counter() by which the part must end
    tokenizer_sha256: Optional[str] = None  # of the tokenizer file it trains with


def _train_part(part, tokenizer, shards, preset: Preset, opts: TrainOptions, ctx, deadline=None,
                tokenizer_sha256=None) -> dict:
    run = _build_part(part, tokenizer, shards, preset, opts, ctx.device)
    run.deadline, run.tokenizer_sha256 = deadline, tokenizer_sha256
    _resume_part(run, opts)
    result = _train_loop(run, preset, opts, ctx)
    reason = run.task.below_bar(result) if ctx.is_main else None
    if reason:
        result["below_bar"] = reason
        flag = "--steps" if part == "renderer" else "--lm-steps"
        line = (f"{part}: below its validation bar after {result['steps']} steps: {reason}; " +
                ("kept (--keep-below-bar)" if opts.keep_below_bar else
                 f"saved in {opts.out_dir}, but not accepted: train --resume with more {flag} continues it, "
                 "--keep-below-bar accepts it"))
        opts.log(line)
        opts.warn(line)
    return result


def _lm_stream(part: str, shards) -> TokenStream:
    """A language model's token stream, split; a corpus too short for it is refused."""
    ids = shards["roots" if part == "manager" else "chunks"]
    stream = TokenStream.split(ids)
    if len(stream.train) < 2 or len(stream.val) < 2:
        raise FractalFloodError(f"corpus too short to train the {part}: {len(ids)} tokens; give it more text")
    return stream


def _build_part(part, tokenizer, shards, preset: Preset, opts: TrainOptions, device) -> PartRun:
    """The model (seeded init), its task and optimizer, on ``device``. Every rank seeds the
    same way: the same initial weights and the same stream of global batches."""
    # the renderer samples its pairs on the device; the LMs cut windows from a CPU stream
    gen = torch.Generator(device=device if part == "renderer" else "cpu")
    gen.manual_seed(opts.seed + ALL_PARTS.index(part))
    torch.manual_seed(opts.seed + ALL_PARTS.index(part))  # weight init: same seed, same model
    if part == "renderer":
        cfg = RendererConfig(levels=[lv.to_dict() for lv in tokenizer.levels],
                             **{**preset.renderer, "top_lengths": opts.top_lengths})
        model = FractalDiffusionModel(cfg)
        task = RendererTask(model, tokenizer, opts.batch or preset.renderer_batch, preset.energy_weight, device, gen)
        steps = opts.steps or preset.renderer_steps
    else:
        if part == "manager":
            extra = preset.manager
            vocab = tokenizer.num_roots
            lengths = [len(tokenizer.root_text(i)) for i in range(tokenizer.num_roots)]
        else:
            extra = preset.peer
            vocab = tokenizer.num_chunks
            lengths = [len(tokenizer.spell(i)) for i in range(tokenizer.num_chunks)]
        if opts.dropout is not None:
            extra = {**extra, "dropout": opts.dropout}
        if opts.lm_shape is not None:
            extra = {**extra, **dict(zip(("n_layers", "d_model", "n_heads"), opts.lm_shape))}
        if part == "manager" and opts.head_classes is not None:
            extra = {**extra, "head_classes": opts.head_classes}
        try:
            config = CausalLMConfig(vocab_size=vocab, **extra)
        except ValueError as e:  # a --head-classes that does not divide the roots the BPE learned
            raise FractalFloodError(f"--head-classes: {e}") from None
        model = CausalLM(config)
        stream = _lm_stream(part, shards)
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
        K = model.config.head_classes
        head = f"{K} classes x {model.config.vocab_size // K}" if K else "one softmax"
        opts.log(f"{part}: dropout {model.config.dropout:g}, weight decay {optim['weight_decay']:g} "
                 f"on {optim['decay']}, output layer {head}")
    return PartRun(part, model, task, opt, gen, steps, lr)


def _resume_part(run: PartRun, opts: TrainOptions) -> None:
    """With ``--resume``, continue from the part's saved state when it has one (every rank
    loads the same files). A ``--steps`` / ``--lm-steps`` given now replaces the saved
    schedule's length."""
    if not opts.resume:
        return
    if not has_state(opts.out_dir, run.part):
        opts.log(f"{run.part}: no saved state in {Path(opts.out_dir) / STATE_DIR}, starting from step 0")
        return
    asked = opts.steps if run.part == "renderer" else opts.lm_steps
    run.start, run.steps, best = restore_state(opts.out_dir, run.part, run.model, run.opt, run.gen,
                                               run.tokenizer_sha256)
    if best is not None:
        run.task.best = best
    opts.log(f"{run.part}: resuming from step {run.start} of {run.steps}")
    if asked is not None and asked != run.steps:
        flag = "--steps" if run.part == "renderer" else "--lm-steps"
        opts.log(f"{run.part}: {flag} {asked} replaces the saved schedule of {run.steps} steps"
                 + (" (already reached: nothing left to train)" if asked <= run.start else ""))
        run.steps = max(asked, run.start)


def _train_loop(run: PartRun, preset: Preset, opts: TrainOptions, ctx) -> dict:
    part, model, task, opt, gen = run.part, run.model, run.task, run.opt, run.gen
    start, steps, device, accum = run.start, run.steps, ctx.device, opts.grad_accum
    pieces = ctx.world_size * accum  # the global batch is cut into this many equal micro-batches
    loss_of = distributed.data_parallel(ctx, model, task.loss)
    c = model.config
    opts.log(f"{part}: {model.num_params() / 1e6:.2f}M parameters ({c.n_layers} layers x {c.d_model} "
             f"x {c.n_heads} heads), {steps} steps on {device}, "
             f"{ctx.world_size} process(es) x {accum} micro-batch(es) per step")
    use_bf16 = device.type == "cuda"
    bar = tqdm(range(start, steps), desc=part, disable=not opts.progress, initial=start, total=steps,
               dynamic_ncols=True)
    last = {}
    t0 = time.perf_counter()
    fit = _DeadlineFit(run, steps, start, opts, ctx, part) if run.deadline else None
    done, step, rng_at_step = start, start, None

    def save(step):
        if ctx.is_main:
            save_state(opts.out_dir, part, model, opt, gen, step, steps, opts.preset, task.best,
                       run.tokenizer_sha256)

    try:
        for step in bar:
            if step >= steps:
                break
            if fit is not None and step == fit.next_step:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                steps = bar.total = fit.refit(step, steps)
            elif run.deadline and step > start and distributed.broadcast_int(
                    ctx, int(time.perf_counter() > run.deadline)):
                opts.log(f"{part}: --time-limit {opts.time_limit:g}s reached, stopping at step {step} of {steps}")
                steps = bar.total = done  # the last step taken is the final one
                if ctx.is_main:
                    last = _validate(run, done, steps, opts, device, use_bf16, bar)
                save(done)
                break
            for g in opt.param_groups:
                g["lr"] = _lr(step, steps, run.lr)
            model.train()
            rng_at_step = gen.get_state()  # a Ctrl-C inside this step saves the state before it
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
            done = step + 1
            if step % 10 == 0 or step == steps - 1:
                logs = distributed.mean_over_ranks(ctx, logs)
                bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items()}, refresh=False)
            if ctx.is_main and (done % opts.eval_every == 0 or done == steps):
                last = _validate(run, done, steps, opts, device, use_bf16, bar)
            if done % opts.save_every == 0 or done == steps:
                save(done)
    except KeyboardInterrupt:
        bar.close()
        if done > start:
            if rng_at_step is not None and done == step:  # the step in progress is dropped
                gen.set_state(rng_at_step)
            save(done)
            raise TrainingInterrupted(f"{part} saved at step {done} of {steps} in "
                                      f"{Path(opts.out_dir) / STATE_DIR}: train --resume continues") from None
        raise TrainingInterrupted(f"{part} stopped at step {done} of {steps}, nothing new to save") from None
    seconds = time.perf_counter() - t0
    opts.log(f"{part}: done, {steps - start} steps in {seconds:.1f}s -> {opts.out_dir}")
    return {"steps": steps, "seconds": seconds, **last}


class _DeadlineFit:
    """Fits a part's schedule to its deadline while it runs. Steps from ``start + 10`` on
    (after warm-up) are timed; at ``start + 40``, and then every tenth of the steps left (at
    least 10), the schedule's length is set to the steps that fit in the time left at the
    pace of the steps since the previous fit, validations and saves included. A busy stretch
    (another job on the machine) therefore shortens the schedule only while it lasts: once
    the pace recovers, the schedule grows back, up to the steps asked for."""

    def __init__(self, run: PartRun, asked: int, start: int, opts: TrainOptions, ctx, part: str):
        self.run, self.asked, self.opts, self.ctx, self.part = run, asked, opts, ctx, part
        self.next_step, self.first_fit = start + 10, start + 40
        self.mark = None  # (step, time) the pace is measured from
        self.logged = asked  # the schedule length last reported

    def refit(self, step: int, steps: int) -> int:
        """At ``step`` (== ``next_step``): the new schedule length (``steps`` unchanged while
        only starting the clock)."""
        now = time.perf_counter()
        if self.mark is None:  # warm-up is over: start the clock
            self.mark, self.next_step = (step, now), self.first_fit
            return steps
        per_step = (now - self.mark[1]) / (step - self.mark[0])
        fit = step + int(max(0.0, self.run.deadline - now) / max(per_step, 1e-9))
        fit = distributed.broadcast_int(self.ctx, min(fit, self.asked))  # every rank runs rank 0's schedule
        new = max(fit, step + 1)
        if new != steps and (self.logged == self.asked or abs(new - self.logged) > 0.1 * self.logged):
            self.opts.log(f"{self.part}: {per_step * 1000:.0f} ms/step over steps {self.mark[0]}-{step}, "
                          f"--time-limit {self.opts.time_limit:g}s: the schedule is now {new} of {self.asked} steps")
            self.logged = new
        self.mark = (step, now)
        self.next_step = step + max(10, (new - step) // 10)
        return new


def _validate(run: PartRun, done: int, steps: int, opts: TrainOptions, device, use_bf16, bar) -> dict:
    """One validation line; the LMs publish only an improving checkpoint, the renderer always."""
    run.model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        last = run.task.validate()
    line = " ".join(f"{k}={v:.4f}" for k, v in last.items())
    (bar.write if opts.progress else opts.log)(f"{run.part} step {done}: {line}")
    if run.task.improved(last):
        ckpt.save_part(Path(opts.out_dir), run.part, run.model,
                       extra={"step": done, "total_steps": steps, "preset": opts.preset,
                              "metrics": {k: float(v) for k, v in last.items()},
                              "tokenizer_sha256": run.tokenizer_sha256})
    return last


def _lr(step: int, total: int, peak: float) -> float:
    warm = min(100, max(1, total // 10))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
