"""``fractal-flood eval``: held-out quality of a model directory (definitions in docs/DESIGN.md).

Held-out data is the tail of the corpus that the manager never trained on (the same 5%
split as training). Reported:

- render fidelity per level: level 0 = share of held-out roots expanded to exactly their
  chunks; level 1 = share of their chunks spelled exactly; overall = share of roots whose
  rendered text equals the tokenizer's decode (full roots -> text flood), with the CER;
- energy detection per level: share of held-out pairs where energy(wrong) > energy(right),
  for random negatives (another condition's expansion) and hard ones (1-2 tokens changed);
- accept rate at the threshold: share of first draws from noise scoring below it;
- manager held-out loss per root and in bits per character, next to the AR peer's
  (a chunk-level model of the renderer's size) when the directory has one.
"""

from __future__ import annotations

import torch

from ..corpus.expansions import canvas_lengths, hard_negatives, level_tables, random_negatives
from ..corpus.reader import load_corpus
from ..corpus.streams import HELDOUT_FRACTION, TokenStream
from ..device import describe, resolve_device
from ..errors import FractalFloodError
from ..fileio import dumps
from ..models import checkpoint as ckpt
from ..render.base import DecodeOptions
from ..render.canvas import draw, score
from ..render.choose import best_of_k
from ..render.decoders import make_decoder
from .metrics import bits_per_char_of_loss, heldout_loss, render_fidelity


@torch.no_grad()
def evaluate(model_dir=None, corpus=None, device="auto", k: int = 1, max_roots: int = 5000,
             threshold: float = 0.5, seed: int = 0) -> dict:
    dev = resolve_device(device)
    text = load_corpus(corpus)
    # a directory may hold only a renderer (``train --parts renderer``): then no manager lines
    m = ckpt.load_model_dir(model_dir or None, dev, parts=("renderer",), optional=("manager", "peer"))
    model_dir, tok, renderer, manager = m.path, m.tokenizer, m.renderer, m.manager
    rmeta = m.meta["renderer"]
    tok.check_text(text)
    roots = TokenStream.split(tok.encode(text)).val
    if len(roots) < 2:
        raise FractalFloodError(f"the corpus is too short to evaluate: its held-out tail "
                                f"({HELDOUT_FRACTION:.0%}) is {len(roots)} root(s), at least 2 are needed")
    held = roots[:max_roots]
    out = {"model": str(model_dir), "device": describe(dev), "heldout_roots": len(held),
           "k": k, "threshold": threshold, "renderer_steps": rmeta.get("step")}

    # --- render fidelity, per level given the right condition (and its true length), then
    # the whole flood
    opts = DecodeOptions(k=k, threshold=threshold, seed=seed)
    tables = [t.to(dev) for t in level_tables(tok, renderer.has_top_lengths)]
    items = held.to(dev)
    levels = []
    g = torch.Generator(device=dev).manual_seed(seed)
    for level, table in enumerate(tables):
        right = table.targets[items]  # (N, L)
        lengths = canvas_lengths(table, items)
        ids = torch.arange(len(items), device=dev)
        ch = best_of_k(renderer, level, items, ids, lengths, k, seed, 0.0, need_energy=True)
        ok = ch.tokens == right
        if ch.child_lengths is not None:  # the length head's answer is part of the level's output
            ok &= ch.child_lengths == table.child_lengths[items]
        if level == 0 and renderer.has_top_lengths:  # and so are the roots' lengths
            ok &= (renderer.top_lengths(items) == lengths)[:, None]
        first = ch.energy if k == 1 else score(renderer, level, items, draw(
            renderer, level, items, ids, torch.zeros_like(ids), lengths, seed, 0.0).tokens, lengths)
        e_right = renderer.energy(level, items, right, lengths)
        rand, rand_len = random_negatives(table, items, g)
        hard, hard_len = hard_negatives(table, items, g)
        e_rand = renderer.energy(level, items, rand, None if lengths is None else rand_len)
        e_hard = renderer.energy(level, items, hard, None if lengths is None else hard_len)
        levels.append({
            "level": level, "name": f"{tok.levels[level].name}->{tok.levels[level + 1].name}",
            "items": len(items),
            "fidelity": float(ok.all(dim=1).float().mean()),
            "detect_random": float((e_rand > e_right).float().mean()),
            "detect_hard": float((e_hard > e_right).float().mean()),
            "accept_rate": float((first < threshold).float().mean()),
            "right_accepted": float((e_right < threshold).float().mean()),
            "mean_energy_right": float(e_right.mean()),
        })
        items = right[right != table.pad_id]  # the true children go on to the next level
    out["levels"] = levels
    result = make_decoder("flood", renderer, tok.alphabet, opts).render(held)
    fid, cer = render_fidelity(tok, held.tolist(), result.root_texts())
    out["render"] = {"fidelity": fid, "cer": cer, "roots": len(held)}

    # --- manager (and AR peer) held-out loss
    out.update(language_model_quality(tok, manager, m.peer, roots, dev))
    return out


@torch.no_grad()
def language_model_quality(tok, manager, peer, roots: torch.Tensor, device) -> dict:
    """The manager's held-out loss per root and the AR peer's per chunk (either may be None),
    each with its bits per character, over the held-out roots ``roots`` (``evaluate``'s
    figures; ``scripts/weight_formats.py`` scores reduced-precision copies with it)."""
    out = {}
    held_chars = len(tok.decode(roots.tolist()))
    if manager is not None:
        loss = heldout_loss(manager, roots, device)
        out["manager"] = {"loss_per_root": loss, "bpc": bits_per_char_of_loss(loss, held_chars / len(roots))}
    if peer is not None:
        chunks = torch.tensor(tok.encode_chunks(tok.decode(roots.tolist())))
        ploss = heldout_loss(peer, chunks, device)
        out["peer"] = {"loss_per_chunk": ploss, "bpc": bits_per_char_of_loss(ploss, held_chars / len(chunks))}
    return out


def format_report(r: dict) -> str:
    lines = [f"model {r['model']} on {r['device']}, {r['heldout_roots']} held-out roots, "
             f"K={r['k']}, threshold {r['threshold']}"]
    lines.append(f"{'level':<14}{'items':>8}{'fidelity':>10}{'det.rand':>10}{'det.hard':>10}"
                 f"{'accept':>9}{'E(right)':>10}")
    for lv in r["levels"]:
        name = lv["name"]
        lines.append(f"{name:<14}{lv['items']:>8}{lv['fidelity']:>10.4f}{lv['detect_random']:>10.4f}"
                     f"{lv['detect_hard']:>10.4f}{lv['accept_rate']:>9.4f}{lv['mean_energy_right']:>10.4f}")
    rd = r["render"]
    lines.append(f"overall render fidelity (roots -> text): {rd['fidelity']:.4f}, CER {rd['cer']:.5f}")
    if "manager" in r:
        m = r["manager"]
        lines.append(f"manager held-out loss: {m['loss_per_root']:.4f} nats/root, {m['bpc']:.4f} bits/char")
    else:
        lines.append("no manager in this directory: manager lines skipped")
    if "peer" in r:
        p = r["peer"]
        lines.append(f"AR peer (chunk-level reference): {p['loss_per_chunk']:.4f} nats/chunk, {p['bpc']:.4f} bits/char")
    return "\n".join(lines)


def run_eval_cli(args) -> int:
    r = evaluate(args.model, args.corpus, args.device, args.k, args.max_roots)
    print(dumps(r, indent=1) if args.json else format_report(r))
    return 0
