"""Data-parallel training on torch.distributed: the process group of a run's ranks, each rank's rows of a
batch, and gradients all-reduced in buckets.

The ranks come from the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; `axon
train --nproc N` sets the same for N local processes): gloo on CPU tensors, NCCL on CUDA ones. Each
rank takes an even share of the global batch (`rows`); its gradients are weighted by its share of the
rows and summed (`Buckets.all_reduce`), which gives every rank the one-process gradient of the mean loss
over the whole batch, so every rank makes the same update and the parameters stay equal without being
sent. Gradients travel in buckets of about `BUCKET_BYTES` (one flat tensor each, fewer and larger
messages than one per parameter), all launched before the first is waited on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from axon.ir.errors import AxonError

BUCKET_BYTES = 25 * 2**20  # as torch DDP's default bucket_cap_mb


class DistributedError(AxonError):
    """A data-parallel run that cannot start: a bad environment, an unreachable rendezvous."""


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    backend: str

    @classmethod
    def from_env(cls, device: torch.device) -> World | None:
        """The process group of this rank (joined here), or None when the environment names one process."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
        except ValueError:
            given = f"{os.environ.get('WORLD_SIZE')!r} and {os.environ.get('RANK')!r}"
            raise DistributedError(f"WORLD_SIZE and RANK must be integers, got {given}") from None
        if size <= 1:
            return None
        if not 0 <= rank < size:
            raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {size}")
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        if not dist.is_initialized():
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise DistributedError(f"a data-parallel run needs {' and '.join(missing)} in the "
                                       f"environment (torchrun sets them; so does axon train --nproc N)")
            try:
                dist.init_process_group(backend, rank=rank, world_size=size)
            except (RuntimeError, ValueError) as e:
                where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
                raise DistributedError(f"rank {rank} of {size} could not join the process group at {where} "
                                       f"({e})") from None
        return cls(rank, size, backend)

    def rows(self, n: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a batch of `n`: even shares, the first ranks one more."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (an interrupt seen by one rank stops all at the
        same step)."""
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


class Buckets:
    """Named tensors summed over the ranks in buckets of about `limit` bytes (in the order given: the
    last parameters' gradients, which a backward makes first, go together)."""

    def __init__(self, world: World, limit: int = BUCKET_BYTES):
        self.world, self.limit = world, limit
        self.sent = 0  # buckets all-reduced so far (for tests and figures)

    def plan(self, tensors: dict[str, torch.Tensor]) -> list[list[str]]:
        buckets, size = [[]], 0
        for name, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            if buckets[-1] and size + nbytes > self.limit:
                buckets.append([])
                size = 0
            buckets[-1].append(name)
            size += nbytes
        return [b for b in buckets if b]

    def all_reduce(self, tensors: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
        """sum over the ranks of `weight` * each tensor (`weight`: this rank's share of the batch)."""
        import torch.distributed as dist

        pending = []
        for names in self.plan(tensors):
            dtypes = {tensors[n].dtype for n in names}
            flat = torch.cat([tensors[n].reshape(-1).to(torch.float32) for n in names]) * weight
            pending.append((names, flat, dist.all_reduce(flat, async_op=True), dtypes))
        out = {}
        for names, flat, work, _ in pending:
            work.wait()
            self.sent += 1
            at = 0
            for n in names:
                t = tensors[n]
                out[n] = flat[at:at + t.numel()].reshape(t.shape).to(t.dtype)
                at += t.numel()
        return out
