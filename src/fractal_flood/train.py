"""Training of the three model parts on one corpus: the renderer (both levels interleaved,
denoising + energy), the manager (next root) and the AR peer (next chunk, the bench's
baseline). One loop serves all three: AdamW, warm-up then cosine decay, bf16 autocast on a
GPU, a progress bar with the loss, a validation line every ``eval_every`` steps, and an
atomic checkpoint every ``save_every`` steps that ``resume=True`` continues from.
"""

from __future__ import annotations

import math
import os
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
from .losses import diffusion_loss, energy_loss
from .noise import corrupt
from .pairs import TokenStream, level_tables, lm_batch, sample_conditions, wrong_pairs
from .renderer import FractalDiffusionModel
from .tokenizer import HierarchicalTokenizer

ALL_PARTS = ("renderer", "manager", "peer")
STATE_DIR = "train_state"


@dataclass
class TrainOptions:
    out_dir: Path
    preset: str = "seed"
    corpus: str | None = None
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
        opts.log(f"tokenizer: reusing {tok_path}")
    else:
        if opts.resume:
            raise FractalFloodError(f"nothing to resume in {out}: it has no {ckpt.TOKENIZER_FILE}")
        t0 = time.perf_counter()
        tokenizer = HierarchicalTokenizer.train(text, preset.num_chunks, preset.num_roots)
        ckpt.save_tokenizer(out, tokenizer)
        opts.log(f"tokenizer: trained in {time.perf_counter() - t0:.1f}s -> {tokenizer}")
    results = {}
    for part in opts.parts:
        results[part] = _train_part(part, tokenizer, text, preset, opts, device)
    return results


def _train_part(part, tokenizer, text, preset: Preset, opts: TrainOptions, device) -> dict:
    # the renderer samples its pairs on the device; the LMs cut windows from a CPU stream
    gen = torch.Generator(device=device if part == "renderer" else "cpu")
    gen.manual_seed(opts.seed + ALL_PARTS.index(part))
    torch.manual_seed(opts.seed + ALL_PARTS.index(part))  # weight init: same seed, same model
    if part == "renderer":
        cfg = RendererConfig(levels=[[s.num_conditions, s.num_targets, s.max_len] for s in tokenizer.levels],
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
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, betas=(0.9, 0.95), weight_decay=0.01)
    state_path = Path(opts.out_dir) / STATE_DIR / f"{part}.pt"
    start = 0
    if opts.resume and state_path.exists():
        start, steps, best = _restore(state_path, model, opt, gen, part)
        task.best = best
        opts.log(f"{part}: resuming from step {start} of {steps}")
    elif opts.resume:
        opts.log(f"{part}: no saved state in {state_path.parent}, starting from step 0")
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
            g["lr"] = _lr(step, steps, preset.lr)
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
            _save_state(opts.out_dir, part, model, opt, gen, done, steps, opts.preset, task.best)
    seconds = time.perf_counter() - t0
    opts.log(f"{part}: done, {steps - start} steps in {seconds:.1f}s -> {opts.out_dir}")
    return {"steps": steps, "seconds": seconds, **last}


def _lr(step: int, total: int, peak: float) -> float:
    warm = min(100, max(1, total // 10))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _save_state(out_dir, part, model, opt, gen, step, total, preset, best) -> None:
    """Everything ``--resume`` needs, written atomically."""
    state_dir = Path(out_dir) / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
             "total_steps": total, "rng": gen.get_state(), "preset": preset, "best": best}
    ckpt.atomic_write(state_dir / f"{part}.pt", lambda p: torch.save(state, p))


def _restore(path: Path, model, opt, gen, part) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        gen.set_state(state["rng"])
        return int(state["step"]), int(state["total_steps"]), state.get("best", float("inf"))
    except Exception as e:
        raise FractalFloodError(f"cannot resume {part} from {path}: {type(e).__name__}: {e}") from None


class RendererTask:
    """Per step, the batch is split evenly over the levels. Each level's share is one
    forward of three groups: noisy targets at random t (denoising cross-entropy), and at
    t = 0 the clean right expansion (energy -> 0) and a wrong one (energy -> 1)."""

    def __init__(self, model, tokenizer, batch, energy_weight, device, gen):
        self.model, self.device, self.gen = model, device, gen
        self.tables = [t.to(device) for t in level_tables(tokenizer)]
        self.per_level = max(2, batch // len(self.tables))
        self.energy_weight = energy_weight
        self.T = model.config.timesteps

    best = None  # the renderer learns a table: the latest weights are the best

    def improved(self, metrics: dict) -> bool:
        return True

    def loss(self):
        total, logs = 0.0, {}
        for level, table in enumerate(self.tables):
            n, e = self.per_level, self.per_level // 2
            cond = sample_conditions(table, n, self.gen)  # (n,)
            right = table.targets[cond]  # (n, L)
            t = torch.randint(0, self.T, (n,), device=self.device, generator=self.gen)
            noisy = corrupt(right, t, self.T, table.num_classes, self.gen)
            wrong = wrong_pairs(table, cond[:e], self.gen)
            cond_all = torch.cat([cond, cond[:e], cond[:e]])
            tgt_all = torch.cat([noisy, right[:e], wrong])
            t_all = torch.cat([t, torch.zeros(2 * e, dtype=torch.long, device=self.device)])
            logits, energy = self.model(level, cond_all, tgt_all, t_all)
            ce = diffusion_loss(logits[:n], right)
            labels = torch.cat([torch.zeros(e), torch.ones(e)]).to(self.device)
            en = energy_loss(energy[n:], labels)
            total = total + ce + self.energy_weight * en
            logs[f"ce{level}"] = ce.detach()  # tensors: no host sync per step
            logs[f"en{level}"] = en.detach()
        return total, logs

    @torch.no_grad()
    def validate(self, n: int = 512) -> dict:
        """Exact expansion from pure noise (argmax, K = 1) and energy separation, per level."""
        out = {}
        g = torch.Generator(device=self.device)
        g.manual_seed(1234)
        for level, table in enumerate(self.tables):
            cond = sample_conditions(table, n, g)
            right = table.targets[cond]
            noise = torch.randint(0, table.num_classes, right.shape, device=self.device, generator=g)
            t = torch.full((n,), self.T - 1, device=self.device, dtype=torch.long)
            pred = self.model.denoise(level, cond, noise, t).argmax(-1)
            out[f"exact{level}"] = (pred == right).all(-1).float().mean().item()
            e_right = self.model.energy(level, cond, right)
            e_wrong = self.model.energy(level, cond, wrong_pairs(table, cond, g))
            out[f"detect{level}"] = (e_wrong > e_right).float().mean().item()
        return out


class LMTask:
    """Next-token prediction on random windows; validation on the held-out tail."""

    def __init__(self, model, stream: TokenStream, batch, device, gen, val_chars: int):
        self.model, self.stream, self.batch, self.device = model, stream, batch, device
        self.gen = gen  # CPU generator
        self.context = model.config.context
        self.chars_per_token = val_chars / len(stream.val)
        self.best = float("inf")

    def improved(self, metrics: dict) -> bool:
        loss = metrics.get("val_loss")
        if loss is None or loss < self.best:
            self.best = loss if loss is not None else self.best
            return True
        return False

    def loss(self):
        x, y = lm_batch(self.stream.train, self.batch, self.context, self.gen)
        loss = self.model.loss(x.to(self.device), y.to(self.device))
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self) -> dict:
        loss = heldout_loss(self.model, self.stream.val, self.device)
        return {"val_loss": loss, "val_bpc": loss / math.log(2) / self.chars_per_token}


@torch.no_grad()
def heldout_loss(model: CausalLM, ids: torch.Tensor, device, max_windows: int = 64) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of the held-out stream."""
    T = min(model.config.context, len(ids) - 1)
    n = min(max_windows, (len(ids) - 1) // T)
    if n < 1:
        raise FractalFloodError("held-out stream is shorter than one window")
    idx = torch.arange(n).unsqueeze(1) * T + torch.arange(T + 1)  # (n, T + 1)
    win = ids[idx].to(device)
    return float(model.loss(win[:, :-1], win[:, 1:]))
