"""Adam as nerfstudio configures it, stepped by torch's fused kernel where the parameters' device has one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig

FUSED_ADAM_DEVICES = ("cpu", "cuda")
"""Devices on which torch's `Adam(fused=True)` runs."""


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """nerfstudio's `AdamOptimizerConfig` with torch's fused update: one pass over each parameter and its two moments
    per step, where the default multi-tensor update makes about six (a hash grid's tables hold millions of
    entries: benchmarks/optimizer_step.py times both). The same update to float32 rounding, and the same state
    dict, so checkpoints load either way."""

    fused: Optional[bool] = None
    """True: the fused kernel; False: torch's default update; None: fused when every parameter is a floating
    point tensor on a CPU or CUDA device."""

    def setup(self, params) -> torch.optim.Optimizer:
        params = list(params)
        fused = self.fused
        if fused is None:
            fused = all(p.is_floating_point() and p.device.type in FUSED_ADAM_DEVICES for p in params)
        kwargs = {key: value for key, value in vars(self).items() if key not in ("_target", "max_norm", "fused")}
        return self._target(params, fused=fused, **kwargs)
