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
from contextlib import contextmanager
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
        with lost_ranks(self.rank):
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (f64: validation totals)."""
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        with lost_ranks(self.rank):
            dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


@contextmanager
def lost_ranks(rank: int):
    """A collective whose peers are gone (a rank killed or crashed) as one clear error, not gloo's trace."""
    try:
        yield
    except RuntimeError as e:  # (torch.distributed.DistBackendError is one)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"rank {rank} lost contact with the other ranks ({first[:200]}); "
                               f"the run's last checkpoint stays whole",
                               hint="see the other ranks' errors; continue with --resume") from None


class Buckets:
    """Named tensors summed over the ranks in buckets of about `limit` bytes, each sent as soon as it is
    full: `open(weight)` starts one step's reduction, `add` gives it each tensor as the backward makes it
    (the last layers' gradients first), `finish` sends the rest and waits for all. Every rank must add
    the same tensors in the same order (they run the same plan), so the buckets match."""

    def __init__(self, world: World, limit: int = BUCKET_BYTES):
        self.world, self.limit = world, limit
        self.sent = 0  # buckets all-reduced so far (for tests and figures)

    def open(self, weight: float) -> Reduction:
        return Reduction(self, weight)


class Reduction:
    """One step's sums (see `Buckets`): `weight` * each tensor, summed over the ranks."""

    def __init__(self, buckets: Buckets, weight: float):
        self.buckets, self.weight = buckets, weight
        self.filling: list[tuple[str, torch.Tensor]] = []
        self.size = 0
        self.pending: list[tuple[list[tuple[str, torch.Tensor]], torch.Tensor, object]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * 4  # sent as f32
        if self.filling and self.size + nbytes > self.buckets.limit:
            self._send()
        self.filling.append((name, t))
        self.size += nbytes

    def _send(self) -> None:
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(torch.float32) for _, t in self.filling]) * self.weight
        self.pending.append((self.filling, flat, dist.all_reduce(flat, async_op=True)))
        self.buckets.sent += 1
        self.filling, self.size = [], 0

    def finish(self) -> dict[str, torch.Tensor]:
        if self.filling:
            self._send()
        out = {}
        for members, flat, work in self.pending:
            with lost_ranks(self.buckets.world.rank):
                work.wait()
            at = 0
            for name, t in members:
                out[name] = flat[at:at + t.numel()].reshape(t.shape).to(t.dtype)
                at += t.numel()
        return out
