"""What differs between a CPU and a GPU for the code that runs on both: autocast's state, and host reads.

- `autocast_enabled` / `full_precision`: one spelling of autocast's state for every torch the package supports
  (`torch.is_autocast_enabled(device_type)` takes no argument before torch 2.4, where it means CUDA).
- `reads_on_host_are_free`: loops over rays (the root search, sphere tracing, VolSDF's rounds) can drop the
  rays that are done, which needs the host to read a mask. On a CPU that read costs nothing and dropping rays
  saves real work; on a GPU it stalls the queue of kernels, so there the loops keep fixed shapes and mask
  finished rays instead. The results are the same either way (tests/test_cuda_rules.py).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch
from torch import Tensor

AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu")
"""Device types `torch.autocast` knows; others (e.g. "meta") have no autocast state."""


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type`, on any torch version."""
    if device_type not in AUTOCAST_DEVICE_TYPES:
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no argument, and the answer is CUDA's
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled() if device_type == "cuda" else False


def autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype autocast casts products to on `device_type`, on any torch version."""
    try:
        return torch.get_autocast_dtype(device_type)
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def full_precision(device_type: str) -> ContextManager:
    """Autocast off for `device_type` (a no-op context for devices without autocast)."""
    if device_type not in AUTOCAST_DEVICE_TYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def at_least_float32(tensor: Tensor) -> Tensor:
    """`tensor` in float32 if it is in a half precision (float64 and float32 are left as they are)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


_as_on_a_gpu = False


def reads_on_host_are_free(device: torch.device) -> bool:
    """Whether a loop may read a tensor on the host (to drop finished rays, or stop early) without stalling a
    device queue: only on a CPU, and not inside `as_on_a_gpu()`."""
    return torch.device(device).type == "cpu" and not _as_on_a_gpu


@contextlib.contextmanager
def as_on_a_gpu() -> Iterator[None]:
    """Take the GPU's paths on a CPU (fixed shapes, no host reads), so that tests and benchmarks on a machine
    without a GPU can run and count them (`neurecon_ns.utils.cuda_rules.HostSyncCounter`)."""
    global _as_on_a_gpu
    previous, _as_on_a_gpu = _as_on_a_gpu, True
    try:
        yield
    finally:
        _as_on_a_gpu = previous
