"""Encoding a catalog on several processes (``torchrun``) for one index.

Every rank reads the whole catalog stream (cheap next to encoding) and encodes
the products whose position is ``rank`` modulo the world size; rank 0 gathers
the encoded shares and writes the one index. A share travels as Arrow IPC
bytes (its product rows, vectors and report messages) in a uint8 tensor, so no
pickle is loaded. Multi-machine runs need the catalog readable on every machine
and the output folder on rank 0's.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa


def process_share() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` unless a process group is up."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def to_rank_gpu(encoder: object) -> None:
    """Move an encoder's torch model (``encoder.model``) to this rank's GPU, where there is one."""
    import torch

    model = getattr(encoder, "model", None)
    if torch.cuda.is_available() and isinstance(model, torch.nn.Module):
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))


def pack_share(table: pa.Table, vectors: np.ndarray, notes: dict[str, list[str]]) -> bytes:
    """One rank's encoded products (``vector_id`` = catalog position) as Arrow IPC bytes,
    with ``notes`` (e.g. the report's skipped rows) as lists of strings."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(len(vectors) + 1, dtype=np.int32) * vectors.shape[1])
    table = table.append_column("vector", pa.ListArray.from_arrays(offsets, flat))
    table = table.replace_schema_metadata({key: json.dumps(v) for key, v in notes.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack_shares(payloads: list[bytes]) -> tuple[pa.Table, np.ndarray, dict[str, list[str]]]:
    """All ranks' shares in catalog order: ``(table, vectors, notes)``.

    Notes about the stream itself (unreadable rows, repeated ids) reach every
    rank; each is kept once, in rank order.
    """
    tables = [pa.ipc.open_stream(payload).read_all() for payload in payloads]
    notes: dict[str, dict[str, None]] = {}
    for table in tables:
        for key, value in (table.schema.metadata or {}).items():
            notes.setdefault(key.decode(), {}).update(dict.fromkeys(json.loads(value)))
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    table = table.take(np.argsort(table.column("vector_id").to_numpy(), kind="stable"))
    vectors = table.column("vector").combine_chunks()
    dim = len(vectors[0]) if len(vectors) else 0
    vectors = vectors.flatten().to_numpy().reshape(len(table), dim).astype(np.float32)
    return table.drop_columns(["vector"]), vectors, {k: list(v) for k, v in notes.items()}


def gather_to_rank0(payload: bytes) -> list[bytes] | None:
    """Every rank's ``payload``, in rank order, on rank 0; None on the other ranks."""
    import torch
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    rank, world = dist.get_rank(), dist.get_world_size()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buffer = torch.zeros(max(longest, 1), dtype=torch.uint8)
    if payload:
        buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    buffer = buffer.to(device)
    buffers = [torch.zeros_like(buffer) for _ in range(world)] if rank == 0 else None
    dist.gather(buffer, buffers, dst=0)
    if rank != 0:
        return None
    return [b[: int(s.item())].cpu().numpy().tobytes() for b, s in zip(buffers, sizes)]
