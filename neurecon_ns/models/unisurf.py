"""UNISURF: Unifying Neural Implicit Surfaces and Radiance Fields (Oechsle, Peng and Geiger, ICCV 2021).

What UNISURF adds to the shared surface model:
- occupancy `o(x) = sigmoid(-logit_scale * f(x))` from the geometry network's level value `f`, which is
  negative inside and zero on the surface `o = 0.5`, as in the authors' code (`f` starts as the SDF of a
  sphere); `o` itself is the alpha of a sample in the compositing sum (eq. 5);
- samples in an interval `[t_s - Delta_k, t_s + Delta_k]` around the first surface crossing `t_s` found by
  root finding, with `Delta_k` shrinking during training (sec. 3.3, eq. 10), plus samples in the free space
  in front of it;
- the normal smoothness loss `|n(x_s) - n(x_s + eps)|` at the surface points (eq. 11), and no eikonal term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from torch import Tensor

from neurecon_ns.model_components.samplers import UnisurfSamplerConfig, unisurf_interval
from neurecon_ns.model_components.sdf_to_density import unisurf_alpha
from neurecon_ns.models.surface_model import SurfaceModel, SurfaceModelConfig

NUM_COLOR_CHANNELS = 3


def occupancy_logit(level: Float[Tensor, "*bs 1"], logit_scale: float) -> Float[Tensor, "*bs 1"]:
    """`logit o(x) = -logit_scale * f(x)`: positive inside (where `f < 0`), zero on the surface."""
    return -logit_scale * level


def normal_difference(
    normals: Float[Tensor, "num_points 3"], normals_perturbed: Float[Tensor, "num_points 3"]
) -> Float[Tensor, " num_points"]:
    """Eq. 11 before the mean: `||n(x_s) - n(x_s + eps)||_2` for unit normals."""
    return (normals - normals_perturbed).norm(dim=-1)


@dataclass
class UnisurfModelConfig(SurfaceModelConfig):
    """UNISURF: occupancy field, occupancy as alpha, root-finding sampler with a shrinking interval."""

    _target: Type = field(default_factory=lambda: UnisurfModel)
    sampler: UnisurfSamplerConfig = field(default_factory=UnisurfSamplerConfig)
    """Root finding, interval schedule and sample counts."""
    logit_scale: float = 10.0
    """Occupancy is `sigmoid(-logit_scale * f)` (10 in the authors' code): on the initial sphere, where `f` is
    a distance, occupancy goes from 0.9 to 0.1 within 0.22 of the surface."""
    eikonal_loss_weight: float = 0.0
    """UNISURF has no eikonal term."""
    normal_smoothness_loss_weight: float = 0.005
    """`lambda` of eq. 11, relative to the paper's colour loss, which sums `|C - C_hat|` over the three
    channels (the shared `rgb_loss` averages them, so the term is added with `lambda / 3`)."""
    normal_perturbation: float = 0.01
    """`eps` is uniform in a cube of this side centred on 0 (training-space units)."""


class UnisurfModel(SurfaceModel):
    config: UnisurfModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.sampler = self.config.sampler.setup()
        self.interval = self.config.sampler.interval_max

    def update_to_step(self, step: int) -> None:
        """Eq. 10 at iteration `step` (before each iteration; nerfstudio also calls it when it loads a
        checkpoint, so volume rendering after training uses the interval the model was trained with)."""
        super().update_to_step(step)
        sampler = self.config.sampler
        self.interval = unisurf_interval(step, sampler.interval_max, sampler.interval_min, sampler.interval_decay)

    def sample_along_rays(self, ray_bundle: RayBundle) -> RaySamples:
        return self.sampler(ray_bundle, self.level_set, self.interval)

    def get_alphas(self, ray_samples: RaySamples, field_outputs: Dict[str, Tensor]) -> Tensor:
        """Eq. 5: the alpha of a sample is its occupancy; section lengths play no part."""
        return unisurf_alpha(occupancy_logit(field_outputs["level"], self.config.logit_scale))

    def find_surface(self, ray_bundle: RayBundle) -> Tuple[Float[Tensor, "num_rays 1"], Bool[Tensor, "num_rays 1"]]:
        """Surface rendering: the first crossing of `o = 0.5`, found as the sampler finds it (root finding with its
        `num_search_steps` and `num_secant_steps`: `f` is no distance, so sphere tracing would step through the
        surface)."""
        return self.sampler.find_surface(ray_bundle, self.level_set)

    def extra_outputs(
        self, ray_bundle: RayBundle, ray_samples: RaySamples, field_outputs: Dict[str, Tensor], weights: Tensor
    ) -> Dict[str, Tensor]:
        if not self.training or self.config.normal_smoothness_loss_weight <= 0:
            return {}
        difference, hit = self.surface_normal_difference(ray_bundle, ray_samples)
        return {"normal_difference": difference, "surface_hit": hit}

    def surface_normal_difference(
        self, ray_bundle: RayBundle, ray_samples: RaySamples
    ) -> Tuple[Float[Tensor, " num_rays"], Float[Tensor, " num_rays"]]:
        """Eq. 11 at the surface points `x_s` that the sampler found, and 1 on the rays that hit, 0 elsewhere.

        Every ray's point is evaluated (the far bound's where it missed) and the misses are weighted out of the
        mean: a boolean selection of the hits would make the host wait for the device on a GPU."""
        assert ray_samples.metadata is not None
        hit = ray_samples.metadata["surface_hit"][:, 0, 0]
        surface_t = ray_samples.metadata["surface_t"][:, 0]
        surface_points = ray_bundle.origins + ray_bundle.directions * surface_t
        eps = (torch.rand_like(surface_points) - 0.5) * self.config.normal_perturbation
        _, _, gradient = self.field.get_level_value_and_gradient(torch.cat([surface_points, surface_points + eps]))
        normals = F.normalize(gradient, dim=-1)
        num_rays = surface_points.shape[0]
        return normal_difference(normals[:num_rays], normals[num_rays:]), hit

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        difference = outputs.get("normal_difference")
        if self.training and difference is not None:
            # the mean over the rays that hit (0 in a batch without a hit: no surface point to regularise)
            hit = outputs["surface_hit"]
            mean_difference = (difference * hit).sum() / hit.sum().clamp(min=1.0)
            weight = self.config.normal_smoothness_loss_weight / NUM_COLOR_CHANNELS
            loss_dict["normal_smoothness_loss"] = weight * mean_difference
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics_dict = super().get_metrics_dict(outputs, batch)
        metrics_dict["interval"] = torch.tensor(self.interval)
        if self.training and "surface_hit" in outputs:
            metrics_dict["surface_hit_fraction"] = outputs["surface_hit"].mean().detach()
        return metrics_dict
