"""Several processes under ``torchrun``: the one module that holds the collectives.

``torchrun --nproc_per_node=N -m selfsup pretrain ...`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous) in their environment;
:func:`setup` joins the process group -- gloo on the CPU, NCCL on CUDA -- and returns the
:class:`World`.  Without torchrun the world is one process and nothing here does anything.

What crosses processes:

- :func:`gather` (the ``gather`` hook the losses take, :data:`selfsup.methods.losses.GatherFn`):
  all-gathers a batch of embeddings for the negatives of a contrastive loss.  Its backward
  *sums* the gradients every rank sends to a slice and returns this rank's, through
  ``torch.distributed.nn.functional.all_gather``.  A hand-written gather whose backward
  returns only the local gradient would drop what the other ranks' anchors send back to
  this rank's embeddings, and the global gradient would be wrong.
- :func:`all_reduce_sum`: a sum over ranks with no gradient (statistics such as DINO's
  centre).
- the gradients themselves: ``DistributedDataParallel`` averages them, so a loss that is a
  mean over this rank's samples gives the gradient of the mean over the global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def silent(_message: str) -> None:
    """The log of every rank but 0: under torchrun, rank 0 alone speaks."""


def rank_log(log, world: World):
    """``log`` on rank 0; on the others nothing, or -- with ``SELFSUP_LOG_ALL_RANKS=1`` --
    ``log`` with a ``[rank r]`` prefix."""
    if world.is_main or log is silent or getattr(log, "rank_prefixed", False):
        return log
    if os.environ.get("SELFSUP_LOG_ALL_RANKS") != "1":
        return silent

    def prefixed(message: str) -> None:
        log(f"[rank {world.rank}] {message}")

    prefixed.rank_prefixed = True
    return prefixed


def from_env() -> World:
    """The world torchrun describes in the environment (one process without it)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> World:
    """Join the process group when torchrun started several processes (gloo on the CPU,
    NCCL on CUDA, each process on its ``LOCAL_RANK`` GPU); returns the world."""
    world = from_env()
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)
    return world


def current() -> World:
    """The world of the running process group (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def gather(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``t`` (N, ...) from every rank into (world * N, ...), differentiable:
    returns ``(t_all, offset)`` with this rank's rows at ``offset : offset + N``."""
    world = current()
    if not world.distributed:
        return t, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(t.contiguous())  # backward: the sum over ranks of each slice's gradient
    return torch.cat(parts), world.rank * t.shape[0]


@torch.no_grad()
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks, in place (no gradient)."""
    if current().distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class StepModule(torch.nn.Module):
    """A method seen as a module whose ``forward`` is its training step, so that
    ``DistributedDataParallel`` can wrap it and average the gradients in backward."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor, generator: torch.Generator, **kwargs):
        return self.method.training_step(x, generator, **kwargs)  # kwargs: index= (Method.wants_index)


def training_step(method: torch.nn.Module, device: torch.device):
    """``method.training_step`` in one process; under several, the same step through
    ``DistributedDataParallel`` (gradients averaged over ranks; parameters a step does
    not use, such as DINO's frozen last layer, are allowed)."""
    if not current().distributed:
        return method.training_step
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(StepModule(method), device_ids=ids, find_unused_parameters=True)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request, a non-finite loss),
    so all ranks leave the step loop together."""
    if not current().distributed:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def same_on_all_ranks(value: int, device: torch.device) -> bool:
    """Whether every rank holds the same ``value`` (True in one process)."""
    if not current().distributed:
        return True
    t = torch.tensor([value, -value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t[0].item() == -t[1].item()


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
