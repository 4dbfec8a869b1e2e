"""Device and data-parallel plumbing shared by the engine's loops.

* :func:`resolve_device` — ``auto`` | ``cpu`` | ``cuda`` (``cuda:LOCAL_RANK`` under
  torchrun) | any torch device string; nothing in the engine hard-codes the CPU.
* :func:`init_from_env` — under ``torchrun`` (``WORLD_SIZE`` > 1) start the process group
  (``nccl`` on CUDA, ``gloo`` otherwise) if the host has not.
* :func:`rank_world`, :func:`is_main`, :func:`shard` — who this process is, and its slice
  of a batch (``[rank::world]``, so every rank sees the same batch order and DDP's mean of
  per-rank gradients equals the gradient of the whole batch when the shards are equal).
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["init_from_env", "is_main", "rank_world", "resolve_device", "shard", "to_device"]


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and prints results (rank 0, or no DDP)."""
    return rank_world()[0] == 0


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's rows of ``t`` (every ``world``-th from ``rank``)."""
    rank, world = rank_world()
    return t if world == 1 else t[rank::world]


def resolve_device(spec: str = "auto", *, key: str = "train.device") -> torch.device:
    """The device to train on. ``auto``: CUDA when torch sees one, else CPU. Under torchrun
    ``cuda`` means this process's GPU (``LOCAL_RANK``).

    :raises ConfigError: CUDA asked for but not available, or an unknown device string.
    """
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{spec!r}: torch sees no CUDA device here (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}); use device: auto or cpu",
                key=key,
            )
        return torch.device("cuda", local) if spec == "cuda" else torch.device(spec)
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {spec!r}; allowed: auto, cpu, cuda, cuda:N", key=key
        ) from None


def init_from_env(device: torch.device) -> bool:
    """Start the process group under torchrun (``WORLD_SIZE`` > 1) if the host has not;
    returns whether this process runs data-parallel."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or not dist.is_available():
        return dist.is_available() and dist.is_initialized()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def to_device(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)
