"""Training of the three model parts on one corpus: the renderer (both levels interleaved,
denoising + energy), the manager (next root) and the AR peer (next chunk, the bench's
baseline). One loop serves all three: AdamW, warm-up then cosine decay, bf16 autocast on a
GPU, a progress bar with the loss, a validation line every ``eval_every`` steps, and an
atomic checkpoint every ``save_every`` steps that ``resume=True`` continues from.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .causal_lm import CausalLM
from .config import CausalLMConfig, Preset, RendererConfig, get_preset
from .corpus import load_corpus
from .device import resolve_device
from .errors import FractalFloodError
from .level_specs import format_specs
from .lm_task import LMTask
from .pairs import TokenStream
from .renderer import FractalDiffusionModel
from .renderer_task import RendererTask
from .tokenizer import HierarchicalTokenizer
from .train_state import STATE_DIR, restore_state, save_state, state_path

ALL_PARTS = ("renderer", "manager", "peer")


@dataclass
class TrainOptions:
    out_dir: Path
    preset: str = "seed"
    corpus: str | None = None
    levels: list | None = None  # the tokenizer's BPE levels, top first (level_specs); None: the preset's
    parts: tuple = ("renderer", "manager")
    steps: int | None = None  # renderer steps (preset default if None)
    lm_steps: int | None = None  # manager / peer steps
    batch: int | None = None
    time_limit: float | None = None  # seconds per part; caps the steps after a timing run
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    eval_every: int = 200
    save_every: int = 500
    progress: bool = True
    log: Callable[[str], None] = field(default=print)


def run_training(opts: TrainOptions) -> dict:
    """Train the tokenizer (or reuse the directory's) and each asked-for part."""
    preset = get_preset(opts.preset)
    for p in opts.parts:
        if p not in ALL_PARTS:
            raise FractalFloodError(f"unknown part {p!r} (choose from: {', '.join(ALL_PARTS)})")
    for name in ("steps", "lm_steps", "batch", "eval_every", "save_every"):
        v = getattr(opts, name)
        if v is not None and v < 1:
            raise FractalFloodError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    device = resolve_device(opts.device)
    out = Path(opts.out_dir)
    text = load_corpus(opts.corpus)
    tok_path = out / ckpt.TOKENIZER_FILE
    if tok_path.exists():
        tokenizer = ckpt.load_tokenizer(out)
        tokenizer.check_text(text)  # the corpus must fit the directory's tokenizer
        if opts.levels is not None and not tokenizer.built_from(opts.levels):
            raise FractalFloodError(f"{tok_path} has the levels {format_specs(tokenizer.levels)}, not "
                                    f"{format_specs(opts.levels)}: train into a new --out")
        opts.log(f"tokenizer: reusing {tok_path}")
    else:
        if opts.resume:
            raise FractalFloodError(f"nothing to resume in {out}: it has no {ckpt.TOKENIZER_FILE}")
        t0 = time.perf_counter()
        tokenizer = HierarchicalTokenizer.train(text, preset.num_chunks, preset.num_roots, levels=opts.levels)
        ckpt.save_tokenizer(out, tokenizer)
        opts.log(f"tokenizer: trained in {time.perf_counter() - t0:.1f}s -> {tokenizer}")
    results = {}
    for part in opts.parts:
        results[part] = _train_part(part, tokenizer, text, preset, opts, device)
    return results


@dataclass
class PartRun:
    """One part ready to train: its model, task, optimizer, generator and schedule."""
    part: str
    model: torch.nn.Module
    task: object  # RendererTask or LMTask: loss(), validate(), improved(), best
    opt: torch.optim.Optimizer
    gen: torch.Generator
    steps: int
    lr: float  # peak learning rate of the schedule
    start: int = 0


def _train_part(part, tokenizer, text, preset: Preset, opts: TrainOptions, device) -> dict:
    run = _build_part(part, tokenizer, text, preset, opts, device)
    _resume_part(run, opts)
    return _train_loop(run, preset, opts, device)


def _build_part(part, tokenizer, text, preset: Preset, opts: TrainOptions, device) -> PartRun:
    """The model (seeded init), its task and optimizer, on ``device``."""
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
            ids, extra = tokenizer.encode(text), preset.manager
            cfg = CausalLMConfig(vocab_size=tokenizer.num_roots, **extra)
        else:
            ids, extra = tokenizer.encode_chunks(text), preset.peer
            cfg = CausalLMConfig(vocab_size=tokenizer.num_chunks, **extra)
        model = CausalLM(cfg)
        stream = TokenStream.split(ids)
        if len(stream.train) < 2 or len(stream.val) < 2:
            raise FractalFloodError(f"corpus too short to train the {part}: {len(ids)} tokens "
                                    f"({len(text)} characters); give it more text")
        decode = tokenizer.decode if part == "manager" else tokenizer.decode_chunks
        val_chars = len(decode(stream.val.tolist()))  # bits per char of the held-out text itself
        task = LMTask(model, stream, opts.batch or preset.lm_batch, device, gen, val_chars)
        steps = opts.lm_steps or (preset.manager_steps if part == "manager" else preset.peer_steps)
    model.to(device)
    lr = (preset.renderer_lr or preset.lr) if part == "renderer" else preset.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    return PartRun(part, model, task, opt, gen, steps, lr)


def _resume_part(run: PartRun, opts: TrainOptions) -> None:
    """With ``--resume``, continue from the part's saved state when it has one."""
    path = state_path(opts.out_dir, run.part)
    if opts.resume and path.exists():
        run.start, run.steps, best = restore_state(path, run.model, run.opt, run.gen, run.part)
        run.task.best = best
        opts.log(f"{run.part}: resuming from step {run.start} of {run.steps}")
    elif opts.resume:
        opts.log(f"{run.part}: no saved state in {path.parent}, starting from step 0")


def _train_loop(run: PartRun, preset: Preset, opts: TrainOptions, device) -> dict:
    part, model, task, opt, gen = run.part, run.model, run.task, run.opt, run.gen
    start, steps = run.start, run.steps
    opts.log(f"{part}: {model.num_params() / 1e6:.2f}M parameters, {steps} steps on {device}")
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
            if fit < steps:
                opts.log(f"{part}: {per_step * 1000:.0f} ms/step, --time-limit {opts.time_limit:.0f}s "
                         f"caps the run at {fit} of {steps} steps")
                steps = max(fit, step + 1)
                bar.total = steps
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, run.lr)
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, logs = task.loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix({k: f"{float(v):.3f}" for k, v in logs.items()}, refresh=False)
        done = step + 1
        if done % opts.eval_every == 0 or done == steps:
            model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                last = task.validate()
            line = " ".join(f"{k}={v:.4f}" for k, v in last.items())
            (bar.write if opts.progress else opts.log)(f"{part} step {done}: {line}")
            if task.improved(last):  # the LMs keep their best held-out checkpoint
                ckpt.save_part(Path(opts.out_dir), part, model,
                               extra={"step": done, "total_steps": steps, "preset": opts.preset,
                                      "metrics": {k: float(v) for k, v in last.items()}})
        if done % opts.save_every == 0 or done == steps:
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
