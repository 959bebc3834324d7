"""CPU seconds of one renderer training step, the packed lower levels in one padded pass
against length-sorted groups (the default): the prediction-and-measurement row for packed
training in docs/log/notebook.md. Same batch, same loss (tests/test_training.py checks equality).

Usage: OMP_NUM_THREADS=1 python scripts/renderer_step_cost.py [LAYERS WIDTH HEADS]
"""

from __future__ import annotations

import sys
import time

import torch

from fractal_flood.models import checkpoint as ckpt
from fractal_flood.models.config import RendererConfig, get_preset
from fractal_flood.models.renderer import FractalDiffusionModel
from fractal_flood.train.renderer_task import RendererTask


def main() -> None:
    sizes = get_preset("small").renderer
    if len(sys.argv) == 4:
        sizes = dict(zip(("n_layers", "d_model", "n_heads"), map(int, sys.argv[1:4])))
    tok = ckpt.load_tokenizer(ckpt.default_model_dir())
    torch.manual_seed(0)
    model = FractalDiffusionModel(RendererConfig(levels=[lv.to_dict() for lv in tok.levels], **sizes))
    task = RendererTask(model, tok, get_preset("small").renderer_batch, 1.0, torch.device("cpu"),
                        torch.Generator().manual_seed(0))
    batch = task.draw()
    print(f"renderer {sizes}, batch {get_preset('small').renderer_batch}, {torch.get_num_threads()} thread(s)")
    for groups in (1, 4, 1, 4):  # twice each, interleaved: the second pair is the one to read
        task.groups = groups
        t0 = time.process_time()
        for _ in range(5):
            model.zero_grad()
            loss, _ = task.loss(batch)
            loss.backward()
        cpu = (time.process_time() - t0) / 5
        print(f"groups={groups}: loss {float(loss.detach()):.6f}, {cpu:.3f} CPU-s per step (forward + backward)")


if __name__ == "__main__":
    main()
