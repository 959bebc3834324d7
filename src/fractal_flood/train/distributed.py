"""One process, or data parallel over several under ``torchrun``.

``torchrun`` starts one process per GPU (or per CPU worker) and tells each its place through
the environment: ``RANK`` (0 .. WORLD_SIZE - 1 over all machines), ``WORLD_SIZE`` and
``LOCAL_RANK`` (its index on this machine, which picks its GPU), plus the rendezvous address
that ``init_process_group`` reads. Without them there is one process and no process group,
and every helper here is a no-op.

The data-parallel contract of training: every rank draws the same *global* batch from the
same seeded generator and computes the loss on its own equal slice of it; DDP averages the
gradients, so a step equals one process's step on the global batch whatever the world size
(up to the order of floating-point sums). Rank 0 alone prints, validates and writes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device
from ..errors import FractalFloodError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# rank 0 may tokenize a large corpus while the others wait at a barrier: allow for it
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The one process that prints, validates and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Several processes, joined by a process group."""
        return self.world_size > 1

    def describe(self) -> str:
        return f"world size {self.world_size}" + (f" (this is rank {self.rank})" if self.active else "")


def from_environment(env=None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun set them, or None outside torchrun."""
    env = os.environ if env is None else env
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise FractalFloodError("RANK, WORLD_SIZE and LOCAL_RANK must all be set to integers (torchrun "
                                f"sets them): got {', '.join(f'{k}={env.get(k)!r}' for k in ENV_VARS)}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise FractalFloodError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, "
                                f"LOCAL_RANK={local}")
    return rank, world, local


@contextmanager
def session(device: str = "auto") -> Iterator[Dist]:
    """Join the job (NCCL between GPUs, gloo between CPU processes) for the length of the
    block, and leave it cleanly however the block ends."""
    place = from_environment()
    if place is None or place[1] == 1:
        yield Dist(device=resolve_device(device))
        return
    rank, world, local = place
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise FractalFloodError(f"LOCAL_RANK {local} has no GPU: this machine has "
                                    f"{torch.cuda.device_count()}; start at most that many processes per node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT)
    try:
        yield Dist(rank, world, local, dev)
    finally:
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    if ctx.active:
        dist.barrier()


def broadcast_int(ctx: Dist, value: int) -> int:
    """Rank 0's ``value`` on every rank (decisions that must agree, such as a step count)."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.long, device=_comm_device(ctx))
    dist.broadcast(t, src=0)
    return int(t.item())


def mean_over_ranks(ctx: Dist, logs: dict) -> dict:
    """Scalar tensors averaged over the ranks (the global batch's loss for the log)."""
    if not ctx.active or not logs:
        return logs
    keys = sorted(logs)
    t = torch.stack([logs[k].detach().float().to(_comm_device(ctx)) for k in keys])
    dist.all_reduce(t)
    return dict(zip(keys, t / ctx.world_size))


def piece_slice(total: int, piece: int, pieces: int) -> slice:
    """Piece ``piece`` of ``pieces`` equal parts of a batch of ``total``. Equal parts make
    the mean of the pieces' mean losses the mean loss of the whole batch."""
    if total % pieces:
        raise FractalFloodError(f"a batch of {total} does not split into {pieces} equal pieces "
                                f"(processes x --grad-accum); choose a --batch that does")
    size = total // pieces
    return slice(piece * size, (piece + 1) * size)


class _LossModule(torch.nn.Module):
    """DDP synchronises gradients only for what runs inside its forward(); the tasks compute
    their loss through model methods and several forwards (one per level), so the whole
    loss is run as this module's forward."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args):
        return self.loss_fn(*args)


def data_parallel(ctx: Dist, model: torch.nn.Module, loss_fn):
    """``loss_fn`` itself with one process; under torchrun, the same call through DDP (which
    also makes every rank start from rank 0's weights)."""
    if not ctx.active:
        return loss_fn
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(_LossModule(model, loss_fn), device_ids=ids)


def sync_gradients(loss_call, last_micro_step: bool):
    """Average gradients only after the last micro-batch of a gradient-accumulation step."""
    if last_micro_step or not isinstance(loss_call, DistributedDataParallel):
        return nullcontext()
    return loss_call.no_sync()


def _comm_device(ctx: Dist) -> torch.device:
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
