"""Sharded dissection over torch.distributed processes (torchrun: one node or several).

Every statistic of a dissection merges exactly, so a sharded run gives the same bytes as one
process:
- each rank streams a contiguous run of whole batches of the images (the same batches a single
  process forms, so every image goes through the model in the same batch and its activations
  are bit for bit the same);
- the exact threshold needs the largest ``keep`` values of each unit: the largest ``keep`` of
  the union of the ranks' kept values are exactly those of the whole dataset;
- beyond the memory budget, the two-pass radix quantile (``quantile.RadixQuantile``) keeps
  integer counts per unit: the ranks' counts sum to those of the whole dataset;
- each rank tallies its own candidate maps at the global thresholds; the counts are integers,
  summed over the ranks;
- the top-k images are merged by (score descending, image index ascending), the order a
  single process keeps.
Rank 0 writes the run directory; every rank checkpoints its own shard so that a rerun resumes.
On several machines RANK (global) says who writes and which shard, LOCAL_RANK only which GPU;
--out may be shared or each machine's own (then its ranks claim it for their checkpoints).

torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is detected;
collectives run on CPU tensors over gloo (NCCL is added for CUDA tensors on GPU nodes).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

import torch
import torch.distributed as dist

from netdissect.errors import NetDissectError, RunError

TIMEOUT = datetime.timedelta(hours=2)  # a rank may wait this long for a slower one


def world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise RunError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; "
                       "launch sharded runs with torchrun") from None


def is_primary() -> bool:
    """Whether this process is the one that writes results and prints (rank 0 or alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def shard_range(n_images: int, batch_size: int, rank: int, world: int) -> range:
    """The images of ``rank``: a contiguous run of whole batches (the last rank may be short).

    Batches are cut as a single process cuts them, from image 0 in steps of ``batch_size``.
    """
    batches = -(-n_images // batch_size)
    first, last = batches * rank // world, batches * (rank + 1) // world
    return range(min(first * batch_size, n_images), min(last * batch_size, n_images))


@dataclass
class Group:
    """This process's place in a sharded run, and the collectives the dissection needs."""

    rank: int
    world: int
    local_rank: int

    @property
    def primary(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over the ranks of an integer CPU tensor."""
        flat = tensor.contiguous()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if flat.data_ptr() != tensor.data_ptr():
            tensor.copy_(flat)
        return tensor

    def gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's ``tensor`` (CPU), concatenated along ``dim`` in rank order.

        Sizes along ``dim`` may differ between ranks; the other dimensions must agree.
        """
        tensor = tensor.detach().cpu().contiguous()
        sizes = [0] * self.world
        dist.all_gather_object(sizes, int(tensor.shape[dim]))
        width = max(sizes)
        pad = list(tensor.shape)
        pad[dim] = width - tensor.shape[dim]
        padded = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim) if pad[dim] else tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)

    def gather_objects(self, obj: Any) -> List[Any]:
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def collect(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the others)."""
        out = [None] * self.world if self.primary else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.primary else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def agree(self, error: Optional[BaseException]) -> None:
        """Raise on every rank when one rank failed (instead of leaving the others waiting)."""
        messages = self.gather_objects(None if error is None else f"{error}")
        for rank, message in enumerate(messages):
            if message is not None:
                if error is not None:
                    raise error
                raise RunError(f"rank {rank} of {self.world} failed: {message}")

    def on_primary(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; its result (or its error) reaches every rank."""
        outcome, error = None, None
        if self.primary:
            try:
                outcome = fn()
            except NetDissectError as exc:
                error = exc
        self.agree(error)
        return self.broadcast(outcome)


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Optional[Group]]:
    """The process group of a sharded run, or None for a single process.

    Joins the group torchrun describes in the environment (and leaves it at the end), or uses
    one the caller already initialized.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() == 1:
            yield None
        else:
            yield Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return
    world = world_from_env()
    if world <= 1:
        yield None
        return
    if not dist.is_available():
        raise RunError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RunError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch sharded runs "
                       "with torchrun (see README, 'Scale')")
    use_cuda = device != "cpu" and torch.cuda.is_available() and dist.is_nccl_available()
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    try:
        yield Group(dist.get_rank(), dist.get_world_size(), local_rank)
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device, group: Optional[Group]) -> torch.device:
    """One GPU per process on a node: rank ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``."""
    if group is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", group.local_rank % torch.cuda.device_count())
