"""NeuS: Learning Neural Implicit Surfaces by Volume Rendering (Wang et al., NeurIPS 2021).

What NeuS adds to the shared surface model:
- a learned sharpness `s` of the logistic density `phi_s` (sec. 3.2), stored as `inv_s = exp(10 * v)`;
- the unbiased discrete opacity from the SDF at the two ends of each section (eq. 13), with the
  cosine annealing of the SDF slope in early training;
- the hierarchical up-sampler with fixed, doubling sharpness (sec. 3.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from torch import Tensor, nn
from torch.nn import Parameter

from neurecon_ns.model_components.samplers import NeuSSamplerConfig
from neurecon_ns.model_components.sdf_to_density import neus_alpha, neus_section_sdfs
from neurecon_ns.models.surface_model import SurfaceModel, SurfaceModelConfig


class LearnedVariance(nn.Module):
    """NeuS's single trainable scalar: `inv_s = 1/s = exp(10 * v)`, the sharpness of `phi_s`."""

    def __init__(self, init_value: float) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(init_value))

    def inv_s(self) -> Tensor:
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


@dataclass
class NeuSModelConfig(SurfaceModelConfig):
    """NeuS: SDF field, logistic density, unbiased opacity, hierarchical up-sampling."""

    _target: Type = field(default_factory=lambda: NeuSModel)
    sampler: NeuSSamplerConfig = field(default_factory=NeuSSamplerConfig)
    """Uniform + up-sampling settings."""
    init_variance: float = 0.3
    """Initial `v` of `inv_s = exp(10 v)` (0.3 gives inv_s = 20)."""
    cos_anneal_end: int = 50000
    """Step at which the SDF slope estimate stops being softened (0 disables the annealing)."""


class NeuSModel(SurfaceModel):
    config: NeuSModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.sampler = self.config.sampler.setup(sphere_radius=self.config.sphere_radius)
        self.variance = LearnedVariance(self.config.init_variance)
        self.cos_anneal_ratio = 1.0 if self.config.cos_anneal_end <= 0 else 0.0

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        """The field's groups, and NeuS's sharpness in a group of its own ("variance"): the paper trains it
        with the network's learning rate, the hash-grid preset with a tenth of the grid's (at 1e-2, Adam
        would move `ln inv_s` by up to 0.1 a step, faster than a surface forms)."""
        param_groups = super().get_param_groups()
        param_groups["variance"] = list(self.variance.parameters())
        return param_groups

    def update_to_step(self, step: int) -> None:
        super().update_to_step(step)
        end = self.config.cos_anneal_end
        self.cos_anneal_ratio = 1.0 if end <= 0 else min(1.0, step / end)

    def occupancy_band(self) -> float:
        """Distance at which a cell's share of the logistic density falls below 1e-3: across a cell of size
        `c` at distance `d` from the surface, NeuS's opacity is about `c * s * exp(-s d)` (s = inv_s), so the
        band is `ln(c * s / 1e-3) / s` (0.33 at the initial s = 20 with 48 cells, 0.02 at s = 500)."""
        if self.occupancy_grid is None:
            return 0.0
        inv_s = float(self.variance.inv_s().detach())
        return max(math.log(self.occupancy_grid.cell_size * inv_s / 1e-3), 0.0) / inv_s

    def sample_along_rays(self, ray_bundle: RayBundle) -> RaySamples:
        return self.sampler(ray_bundle, self.level_set)

    def get_alphas(self, ray_samples: RaySamples, field_outputs: Dict[str, Tensor]) -> Tensor:
        """Eq. 13 on each section, its end-point SDFs estimated from the mid point."""
        deltas = ray_samples.frustums.ends - ray_samples.frustums.starts
        cos_view_normal = (ray_samples.frustums.directions * field_outputs["gradient"]).sum(dim=-1, keepdim=True)
        sdf_prev, sdf_next = neus_section_sdfs(field_outputs["level"], cos_view_normal, deltas, self.cos_anneal_ratio)
        return neus_alpha(sdf_prev, sdf_next, self.variance.inv_s())

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics_dict = super().get_metrics_dict(outputs, batch)
        metrics_dict["inv_s"] = self.variance.inv_s().detach()
        metrics_dict["cos_anneal_ratio"] = torch.tensor(self.cos_anneal_ratio)
        return metrics_dict
