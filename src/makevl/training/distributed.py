"""torch.distributed plumbing for ``makevl train`` under ``torchrun``.

The same command runs on one process or many: when ``torchrun`` sets
``WORLD_SIZE`` > 1 we join a process group (gloo on CPU, nccl on CUDA), every
rank takes its own slice of each global batch, DDP averages gradients, and
only rank 0 writes checkpoints, logs and the progress bar.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` means CUDA when there is one, else CPU; each rank gets its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (emulated bf16 is slower than fp32).

    CUDA: compute capability 8.0 (Ampere) or newer. CPU: x86 AVX512-BF16 or AMX,
    as torch detects them; any other CPU (ARM's bf16 included) counts as not native.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def setup(device: str = "auto") -> DistInfo:
    """Join the process group ``torchrun`` describes in env vars; a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, torch_device)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextmanager
def main_rank_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache), then the others (which reuse it)."""
    if not info.is_main:
        barrier(info)
    yield
    if info.is_main:
        barrier(info)


def _reduce_scalar(value, dtype: torch.dtype, op, info: DistInfo):
    """``value`` reduced by ``op`` over all ranks, on every rank (as a Python number)."""
    tensor = torch.tensor([value], dtype=dtype, device=info.device)
    dist.all_reduce(tensor, op=op)
    return tensor.item()


def min_int(value: int, info: DistInfo) -> int:
    """The smallest ``value`` over ranks (e.g. the batch size every rank can match)."""
    if not info.enabled:
        return value
    return int(_reduce_scalar(value, torch.int64, dist.ReduceOp.MIN, info))


def average_gradients(parameters, info: DistInfo) -> None:
    """Average ``.grad`` over ranks by hand, for a step where DDP's own sync was skipped."""
    if not info.enabled:
        return
    for param in parameters:
        if param.requires_grad:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= info.world_size


def max_float(value: float, info: DistInfo) -> float:
    """The largest ``value`` over all ranks, on every rank."""
    if not info.enabled:
        return value
    return float(_reduce_scalar(value, torch.float64, dist.ReduceOp.MAX, info))


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any; keeps ranks in step (e.g. on SIGTERM)."""
    if not info.enabled:
        return flag
    return bool(_reduce_scalar(1 if flag else 0, torch.int32, dist.ReduceOp.MAX, info))


def sum_counts(counts: dict[str, int], info: DistInfo) -> dict[str, int]:
    """Add per-reason counters from all ranks (keys may differ between ranks)."""
    if not info.enabled:
        return dict(counts)
    gathered: list[dict[str, int] | None] = [None] * info.world_size
    dist.all_gather_object(gathered, dict(counts))
    total: dict[str, int] = {}
    for part in gathered:
        for key, value in (part or {}).items():
            total[key] = total.get(key, 0) + value
    return total


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (used to save each rank's RNG state)."""
    if not info.enabled:
        return [obj]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
