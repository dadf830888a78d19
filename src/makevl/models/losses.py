"""Contrastive and keyword losses, cross-device gathering and a memory bank of negatives.

Follows open_clip's ``ClipLoss``: symmetric InfoNCE with a learnable scale. Two
additions for product search: rows that are the same product (equal ids) are
never each other's negatives, and the a->b direction may see extra negatives
(product vectors from a memory bank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    ids: torch.Tensor | None = None,
    b_extra: torch.Tensor | None = None,
    ids_extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned ``a`` [N,d] and ``b`` [N,d].

    ``ids`` [N]: rows with equal ids are the same item; off-diagonal matches are
    removed from the negatives. ``b_extra`` [M,d] (with ``ids_extra`` [M]) adds
    negatives to the a->b direction only; an extra row of a product already in
    the batch is dropped, since the batch holds a fresh vector of that product.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a has {a.shape[0]} rows but b has {b.shape[0]}; pass extras as b_extra")
    n = a.shape[0]
    labels = torch.arange(n, device=a.device)
    logits_ba = logit_scale * b @ a.t()
    candidates = b if b_extra is None else torch.cat([b, b_extra.to(b.dtype)])
    logits_ab = logit_scale * a @ candidates.t()
    if ids is not None:
        duplicate = (ids[:, None] == ids[None, :]) & ~torch.eye(
            n, dtype=torch.bool, device=a.device
        )
        logits_ba = logits_ba.masked_fill(duplicate, float("-inf"))
        if b_extra is not None:
            if ids_extra is None:
                raise ValueError("b_extra needs ids_extra when ids are given")
            in_batch = (ids[:, None] == ids_extra[None, :]).any(0, keepdim=True).expand(n, -1)
            duplicate = torch.cat([duplicate, in_batch], dim=1)
        logits_ab = logits_ab.masked_fill(duplicate, float("-inf"))
    return (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels)) / 2


def keyword_prediction_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label keyword prediction: binary cross-entropy per keyword, averaged."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (rank order); identity outside torch.distributed.

    Gradients flow back to each rank's own shard, so a loss computed on the
    gathered global batch, identical on every rank, gives after DDP's gradient
    averaging exactly the single-process gradient of that global batch. All
    ranks must pass the same shape.
    """
    if not is_distributed():
        return x
    if x.requires_grad:
        import torch.distributed.nn.functional as dist_nn

        return torch.cat(dist_nn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class ProductMemoryBank(nn.Module):
    """A FIFO queue of recent product vectors and their ids, used as extra negatives.

    Stored vectors are detached: they come from earlier steps (MoCo-style), so
    they cost no backward pass. Slots not yet filled are never returned.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"memory bank size must be positive, got {size}")
        self.size = size
        self.register_buffer("vectors", torch.zeros(size, dim), persistent=False)
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("head", torch.zeros((), dtype=torch.long), persistent=False)

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def push(self, vectors: torch.Tensor, ids: torch.Tensor) -> None:
        """Add a batch, overwriting the oldest entries once full."""
        vectors, ids = vectors.detach()[-self.size :], ids.detach()[-self.size :]
        slots = (int(self.head) + torch.arange(len(ids), device=self.ids.device)) % self.size
        self.vectors[slots] = vectors.to(self.vectors.dtype)
        self.ids[slots] = ids.to(self.ids.device)
        self.head.fill_((int(self.head) + len(ids)) % self.size)
        self.count.fill_(min(self.size, int(self.count) + len(ids)))

    def negatives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors [M,d], ids [M])`` currently held: copies, safe to use across a push."""
        n = int(self.count)
        return self.vectors[:n].clone(), self.ids[:n].clone()
