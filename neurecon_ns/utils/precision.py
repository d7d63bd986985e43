"""Which precision the networks' matrix products run in: float32, bfloat16 on CPUs with bf16 matrix units, or
whatever autocast asks for (half precision on a GPU under nerfstudio's `--mixed-precision`).

The choice is made once, when the field first runs on a device (`resolve_precision`), from the setting
`--pipeline.model.networks.precision {auto,fp32,bf16,autocast}`:

- "auto": bfloat16 on a CPU whose flags list bf16 matrix units (`amx_bf16`: Intel AMX; `avx512_bf16`: AVX-512
  BF16 dot products), float32 on a CPU without them (there bf16 products are emulated and slower than fp32), and
  "autocast" on a GPU;
- "autocast": the products follow the autocast around the call (float16 or bfloat16 on a GPU under nerfstudio's
  `mixed_precision`, float32 without it); CPU float16 products are an order of magnitude slower than fp32, so this
  is for GPUs and for tests that hold the GPU path to CUDA's rules on a CPU (tests/test_cuda_rules.py).

What runs in the product precision and what stays float32 is in docs/speed.md ("Precision").
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal, Optional, Set

import torch

Precision = Literal["auto", "fp32", "bf16", "autocast"]

BF16_MATRIX_UNIT_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (as /proc/cpuinfo and `lscpu` print them) of units that multiply bfloat16 matrices natively."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[Set[str]]:
    """The CPU's feature flags (the first `flags` line of `cpuinfo`), or None where the file cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, separator, value = line.partition(":")
        if separator and name.strip() == "flags":
            return set(value.split())
    return None


def has_bf16_matrix_units(flags: Optional[Iterable[str]]) -> bool:
    """Whether a CPU with these flags multiplies bfloat16 natively; with no flags (no /proc/cpuinfo: macOS,
    Windows), torch's own CPU capability check decides."""
    if flags is not None:
        return any(flag in BF16_MATRIX_UNIT_FLAGS for flag in flags)
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    try:
        found = capabilities()
    except Exception:  # a torch whose probe fails on this CPU: the safe answer
        return False
    return any(bool(found.get(flag, False)) for flag in BF16_MATRIX_UNIT_FLAGS)


def resolve_precision(setting: Precision, device_type: str, flags: Optional[Iterable[str]] = None) -> Literal["fp32", "bf16", "autocast"]:
    """The precision `setting` means on `device_type` ("auto" resolved; see the module's docstring). `flags`
    are the CPU's (read from /proc/cpuinfo when not given)."""
    if setting != "auto":
        return setting
    if device_type != "cpu":
        return "autocast"
    return "bf16" if has_bf16_matrix_units(cpu_flags() if flags is None else flags) else "fp32"


def precision_message(setting: Precision, resolved: str, device_type: str) -> str:
    """The one line that says which precision the networks' products run in, and how to choose another."""
    reason = {
        ("auto", "bf16"): "this CPU has bf16 matrix units",
        ("auto", "fp32"): "this CPU has no bf16 matrix units",
        ("auto", "autocast"): "on a GPU they follow --mixed-precision",
    }.get((setting, resolved), "as set")
    what = {"fp32": "float32", "bf16": "bfloat16 with float32 accumulation", "autocast": "the precision autocast asks for"}[resolved]
    return (f"Networks' products on {device_type}: {what} ({reason}); choose with "
            "--pipeline.model.networks.precision {auto,fp32,bf16,autocast}.")


def product_dtype(resolved: str, device_type: str) -> torch.dtype:
    """The dtype of the products now: float32, bfloat16, or autocast's dtype where "autocast" and autocast is on."""
    if resolved == "bf16":
        return torch.bfloat16
    if resolved == "autocast":
        from neurecon_ns.utils.accelerator import autocast_dtype, autocast_enabled

        if autocast_enabled(device_type):
            return autocast_dtype(device_type)
    return torch.float32
