"""Where code runs: device selection, AMP, and torch.distributed process groups.

Everything is tested on CPU (and DDP with gloo); the CUDA paths (device choice,
autocast, pinned memory, NCCL) are the same code with a different device.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kdcache._config import PRECISIONS
from kdcache.errors import ConfigError

__all__ = ["select_device", "resolve_precision", "autocast", "DistContext", "unwrap_worker_error"]


def unwrap_worker_error(e: BaseException) -> BaseException:
    """The error a DataLoader worker raised, as the main process would have raised it.

    torch re-raises a worker's exception as the same type with a 35-45 line message ("Caught DataError in
    DataLoader worker process 0. Original Traceback ..."); the original message is its last line. Returns
    ``e`` itself when it is not such a wrapper."""
    msg = str(e)
    if not msg.startswith("Caught ") or "Original Traceback" not in msg:
        return e
    name = f"{type(e).__module__}.{type(e).__qualname__}"
    found = [ln[len(name) + 2:] for ln in msg.splitlines() if ln.startswith(name + ": ")]
    if not found:
        return e
    try:
        return type(e)(found[-1])
    except Exception:  # noqa: BLE001 - a type that cannot be rebuilt from its message: keep torch's
        return e


def select_device(name: str = "auto", *, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (the process's local rank's GPU) when available, else CPU."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; use `device` cpu")
        if name == "cuda":
            name = f"cuda:{local_rank % torch.cuda.device_count()}"
        dev = torch.device(name)
        torch.cuda.set_device(dev)
        return dev
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")



def resolve_precision(device: torch.device, precision: str = "fp32", amp: bool = False) -> str:
    """The precision a run uses: ``precision``, or with the older ``amp`` switch on CUDA bf16 when
    supported, else fp16 (``amp`` does nothing elsewhere)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" and amp and device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(device: torch.device, enabled: bool = False, *, precision: str | None = None):
    """Autocast for ``precision`` (``bf16``/``fp16`` on any device; ``fp32``: a no-op). Without a
    ``precision``, ``enabled`` is the older switch: on CUDA bf16 when supported, else fp16."""
    p = resolve_precision(device, precision or "fp32", enabled)
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)


@dataclass
class DistContext:
    """The process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @classmethod
    def from_env(cls, device_hint: str = "auto") -> "DistContext":
        """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_initialized():
            return cls(rank, world, local, False)
        use_cuda = device_hint != "cpu" and torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
        return cls(rank, world, local, True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (so all ranks can stop together)."""
        if not self.distributed:
            return bool(flag)
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
