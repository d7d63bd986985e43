"""CUDA's rules, checked on a CPU: half-precision autocast as CUDA applies it, and a counter of host syncs.

Most users train on a CUDA GPU; the test machines have none. Two things that go wrong only there can still
be caught on a CPU:

- `CudaAutocastRules`: inside `torch.autocast("cpu", dtype=torch.float16)`, CPU autocast already casts the
  matrix products (linear, mm, addmm, bmm, matmul) to half as CUDA's does, but it differs elsewhere. This mode
  adds what CUDA does and CPU does not: it refuses the ops CUDA's autocast refuses
  (`binary_cross_entropy`, "unsafe to autocast"), and runs the ops of CUDA's float32 list (exp, log, pow,
  softplus, sums, norms, cumulative products, the losses) in float32, as CUDA's autocast does, so that the
  dtypes a model meets are CUDA's.
- `HostSyncCounter`: counts the operations that make the host wait for the device on a GPU: reading a value
  (`.item()`, `bool(t)`, `int(t)`), `nonzero`, indexing or assigning with a boolean mask, and copies from the
  host to another device (a CPU tensor `.to(points)`, visible when the points are on the "meta" device).
  On a CPU these cost nothing, which is why only a count shows them.

What neither can show: CUDA's kernels themselves, tiny-cuda-nn, and timings (docs/gpu.md).
"""

from __future__ import annotations

import collections
from typing import Callable, Counter, Dict

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from neurecon_ns.utils.accelerator import autocast_enabled

REFUSED_UNDER_CUDA_AUTOCAST = {F.binary_cross_entropy}
"""Functions CUDA's autocast raises on (in half precision the loss of a probability near 0 or 1 is lost); their
logits form is safe."""


def _cuda_float32_functions() -> set:
    """The Python entry points of CUDA autocast's float32 list (ops it runs in float32 whatever the input)."""
    names = [
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
        "sinh", "tan", "pow", "cumprod", "cumsum", "prod", "sum", "norm", "dist", "cdist", "logsumexp",
        "softmax", "log_softmax",
    ]
    functions = {getattr(torch, name) for name in names}
    functions |= {getattr(torch.Tensor, name) for name in names if hasattr(torch.Tensor, name)}
    functions |= {torch.linalg.vector_norm, torch.Tensor.__pow__, torch.Tensor.__rpow__}
    functions |= {
        F.softplus, F.layer_norm, F.group_norm, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.nll_loss,
        F.kl_div, F.binary_cross_entropy_with_logits, F.cosine_similarity, F.softmax, F.log_softmax, F.normalize,
    }
    return functions


CUDA_FLOAT32_FUNCTIONS = _cuda_float32_functions()


def _to_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


class CudaAutocastRules(TorchFunctionMode):
    """CUDA autocast's refusals and float32 list, applied to CPU autocast (use inside `torch.autocast("cpu", ...)`).

    The rules apply only where autocast is on, so code that turns it off around a full-precision pass is seen
    as CUDA would see it.
    """

    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if autocast_enabled("cpu"):
            if func in REFUSED_UNDER_CUDA_AUTOCAST:
                raise RuntimeError(
                    f"{func.__name__} is unsafe to autocast (CUDA's autocast refuses it): use its logits form, "
                    "or compute it with autocast disabled"
                )
            if func in CUDA_FLOAT32_FUNCTIONS:
                args, kwargs = tree_map(_to_float32, args), tree_map(_to_float32, kwargs)
        return func(*args, **kwargs)


def _is_boolean_index(indices) -> bool:
    return any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in indices)


class HostSyncCounter(TorchDispatchMode):
    """Counts, by kind, the operations that wait for the device on a GPU (see the module's docstring).

    `counts` maps a kind ("read a value", "nonzero", "boolean-mask indexing", "host-to-device copy", ...) to how
    often it happened; `total` is their sum.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self._sync_kind(func, args, kwargs)
        if kind is not None:
            self.counts[kind] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _sync_kind(func, args, kwargs):
        packet = func.overloadpacket
        if packet in (torch.ops.aten._local_scalar_dense, torch.ops.aten.is_nonzero):
            return "read a value"
        if packet in (torch.ops.aten.nonzero, torch.ops.aten.argwhere):
            return "nonzero"
        if packet in (torch.ops.aten.masked_select, torch.ops.aten.unique_consecutive, torch.ops.aten._unique2):
            return "data-dependent size"
        if packet is torch.ops.aten.repeat_interleave and "output_size" not in kwargs and isinstance(args[0], torch.Tensor):
            return "data-dependent size"
        if packet in (torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_, torch.ops.aten._index_put_impl_):
            if len(args) > 1 and _is_boolean_index(args[1]):
                return "boolean-mask indexing"
        if packet in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            source = args[1] if packet is torch.ops.aten.copy_ else args[0]
            target_device = args[0].device if packet is torch.ops.aten.copy_ else kwargs.get("device", source.device)
            if isinstance(source, torch.Tensor) and source.device.type == "cpu" and torch.device(target_device).type != "cpu":
                return "host-to-device copy"
        return None


def count_host_syncs(function: Callable[[], object]) -> Dict[str, int]:
    """Run `function()` and return the host syncs it made, by kind."""
    with HostSyncCounter() as counter:
        function()
    return dict(counter.counts)
