"""Data-parallel training over several processes with torch.distributed.

Every process (rank) holds the model and the data, draws the same global minibatches in
the same order, and evaluates the loss on its own shard of each batch. Data-plate sites
on a shard are scaled by N / B (B the *global* batch size) and sites outside the data
plate by 1 / world_size, so the per-rank losses add up to exactly the single-process
minibatch loss; gradients are summed across ranks (one coalesced all-reduce per step) and
every rank takes the same optimizer step. A Pyro program's loss is not a module
``forward``, so the gradients are reduced directly rather than through a
``DistributedDataParallel`` wrapper; the arithmetic is the same.

``em(..., distributed=True)`` shards the rows of every E-step the same way and sums the
sufficient statistics (or the posteriors, or the M-step's gradients) over ranks.

Launch with ``torchrun --nproc_per_node=P script.py``; ``fit(..., distributed=True)`` and
``em(..., distributed=True)`` join the process group that torchrun describes (gloo on CPU,
nccl on CUDA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lvm_pyro.errors import ConfigurationError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the group."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        n = batch[0].shape[0]
        lo = n * self.rank // self.world_size
        hi = n * (self.rank + 1) // self.world_size
        return tuple(t[lo:hi] for t in batch)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite every rank's tensors with rank 0's, in place."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def broadcast_int(self, value: int, device: torch.device) -> int:
        holder = torch.tensor([value], dtype=torch.int64, device=device)
        dist.broadcast(holder, src=0)
        return int(holder.item())

    def all_reduce_step(self, loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """Sum the loss and every gradient over ranks in one coalesced all-reduce.

        Returns the summed loss; the gradients are replaced by their sums in place.
        """
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([loss.detach().reshape(1).to(grads[0].dtype)] + [g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 1
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p)
            offset += n
        return flat[0]

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors over ranks in place: one coalesced all-reduce per dtype."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def all_gather_rows(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along ``dim`` in rank order (the inverse of
        ``shard``; the shards may differ in size by one)."""
        sizes = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[dim]], dtype=torch.int64, device=tensor.device))
        sizes = [int(s) for s in sizes]
        pad_shape = list(tensor.shape)
        pad_shape[dim] = max(sizes) - tensor.shape[dim]
        padded = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim) if pad_shape[dim] else tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p.narrow(dim, 0, size) for p, size in zip(parts, sizes)], dim)

    def all_reduce_sum(self, value: float, device: torch.device) -> float:
        holder = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(holder, op=dist.ReduceOp.SUM)
        return float(holder.item())


def distributed_context(device: torch.device) -> DistributedContext:
    """Join (or reuse) the process group described by torchrun's environment variables."""
    if not dist.is_available():
        raise ConfigurationError("distributed=True needs a torch build with torch.distributed")
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            raise ConfigurationError(
                "distributed=True needs a process group: launch with "
                "`torchrun --nproc_per_node=P your_script.py` (or call "
                "torch.distributed.init_process_group first)"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def join_group(device: torch.device, distributed: bool) -> tuple[DistributedContext | None, torch.device]:
    """The process group (None unless ``distributed``) and this process's device: under
    torchrun on CUDA, the GPU of its local rank."""
    if not distributed:
        return None, device
    group = distributed_context(device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return group, device
