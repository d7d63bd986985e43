"""VolSDF: Volume Rendering of Neural Implicit Surfaces (Yariv et al., NeurIPS 2021).

What VolSDF adds to the shared surface model:
- density from the SDF, `sigma(x) = alpha * Psi_beta(-d(x))`, the CDF of a zero-mean Laplace
  distribution with a learned scale `beta` and `alpha = 1 / beta` (sec. 3.1, eq. 2-3);
- the error-bounded sampler of sec. 3.3 and Algorithm 1 (`ErrorBoundedSampler`);
- for object captures, the scene's bounding sphere as a second surface, `d = min(d, R - |x|)`, so
  that every ray ends on something opaque (the paper's DTU setting; sec. 4 / supplementary);
- the eikonal loss on the ray samples plus points drawn uniformly in the bounding volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle, RaySamples
from torch import Tensor, nn
from torch.nn import Parameter

from neurecon_ns.errors import UserInputError
from neurecon_ns.model_components.colliders import SceneSphereCollider
from neurecon_ns.model_components.samplers import ErrorBoundedSamplerConfig
from neurecon_ns.model_components.sdf_to_density import alpha_from_density, volsdf_density
from neurecon_ns.models.surface_model import SurfaceModel, SurfaceModelConfig


class LaplaceDensity(nn.Module):
    """VolSDF's density `sigma = (1 / beta) * Psi_beta(-d)` with `beta = |beta_param| + beta_min` (always positive)."""

    def __init__(self, init_beta: float, beta_min: float) -> None:
        super().__init__()
        self.beta_min = beta_min
        self.beta_param = nn.Parameter(torch.tensor(init_beta - beta_min))

    def beta(self) -> Tensor:
        return self.beta_param.abs() + self.beta_min

    def forward(self, sdf: Tensor) -> Tensor:
        return volsdf_density(sdf, self.beta())


@dataclass
class VolSDFModelConfig(SurfaceModelConfig):
    """VolSDF: SDF field, Laplace-CDF density, error-bounded sampling, scene sphere as background."""

    _target: Type = field(default_factory=lambda: VolSDFModel)
    sampler: ErrorBoundedSamplerConfig = field(default_factory=ErrorBoundedSamplerConfig)
    """Error-bounded sampling settings (Algorithm 1)."""
    init_beta: float = 0.1
    """Initial scale `beta` of the Laplace density (the authors' 0.1, for their 100k steps: `beta` is learnt
    linearly, Adam moves it by about the learning rate per step, so runs of a few thousand steps should
    start lower, e.g. 0.03; see docs/volsdf.md)."""
    beta_min: float = 1e-4
    """Floor of `beta`: `beta = |beta_param| + beta_min` (0 for no floor)."""
    scene_sphere_background: bool = True
    """Use the scene sphere as a background surface, `d = min(d, R - |x|)`: every ray ends on it and the
    last section is opaque (VolSDF's setting for object captures such as DTU). Rays are then traced
    from the object's sphere to the scene sphere, and the `accumulation` output (the one the mask loss
    reads) is the opacity inside the object's sphere only."""
    scene_sphere_radius: float = 3.0
    """Radius `R` of the scene sphere, in the training space (the object lies in the unit sphere; 3.0 as the authors use for DTU)."""
    num_eikonal_uniform_points: int = 1024
    """Points drawn uniformly in the bounding volume for the eikonal loss, besides the ray samples: one per
    ray of the paper's 1024-ray batch, as the authors do. The volume is the scene sphere when it is the
    background (the SDF then models the background surfaces too), else the object's sphere. They reach
    space the rays' samples miss (inside the object, occluded parts) at about 1% of the samples' gradient cost."""


class VolSDFModel(SurfaceModel):
    config: VolSDFModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.sampler = self.config.sampler.setup()
        self.density = LaplaceDensity(self.config.init_beta, self.config.beta_min)
        if self.config.scene_sphere_background:
            if self.config.background_model != "none":
                # every ray would end on the opaque scene sphere, hiding the background network
                raise UserInputError(
                    f"background_model '{self.config.background_model}' needs the scene sphere off; "
                    "pass --pipeline.model.scene-sphere-background False (or use volsdf-nerfpp)."
                )
            if self.config.scene_sphere_radius <= self.config.sphere_radius:
                raise UserInputError(
                    f"scene_sphere_radius ({self.config.scene_sphere_radius}) must exceed sphere_radius "
                    f"({self.config.sphere_radius}); set --pipeline.model.scene-sphere-radius larger."
                )
            self.collider = SceneSphereCollider(
                radius=self.config.sphere_radius,
                scene_radius=self.config.scene_sphere_radius,
                near_plane=self.config.near_plane,
            )

    def extra_field_parameters(self) -> List[Parameter]:
        return list(self.density.parameters())

    def uniform_points_in_sphere(self, num_points: int) -> Float[Tensor, "num_points 3"]:
        """Eikonal points, uniform in the ball the SDF is defined in: the scene sphere when it is the background."""
        radius = self.config.scene_sphere_radius if self.config.scene_sphere_background else self.config.sphere_radius
        directions = F.normalize(torch.randn(num_points, 3, device=self.device), dim=-1)
        return directions * radius * torch.rand(num_points, 1, device=self.device) ** (1.0 / 3.0)

    def scene_sdf(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs"]:
        """The SDF the density is computed from: the field's, and the scene sphere's if it is on."""
        return self.with_scene_sphere(self.level_set(points), points)

    def with_scene_sphere(self, sdf: Tensor, points: Float[Tensor, "*bs 3"]) -> Tensor:
        """`min(d, R - |x|)` when the scene sphere is the background, else `d` (`sdf` is `[*bs]` or `[*bs, 1]`)."""
        if not self.config.scene_sphere_background:
            return sdf
        sphere_sdf = self.config.scene_sphere_radius - points.norm(dim=-1)
        return torch.minimum(sdf, sphere_sdf.reshape(sdf.shape))

    def sample_along_rays(self, ray_bundle: RayBundle) -> RaySamples:
        return self.sampler(ray_bundle, self.scene_sdf, self.density.beta().detach())

    def get_alphas(self, ray_samples: RaySamples, field_outputs: Dict[str, Tensor]) -> Tensor:
        """`alpha_i = 1 - exp(-sigma(x_i) delta_i)` with the density at each section's mid point."""
        points = ray_samples.frustums.get_positions()
        sdf = self.with_scene_sphere(field_outputs["level"], points)
        deltas = ray_samples.frustums.ends - ray_samples.frustums.starts
        alphas = alpha_from_density(self.density(sdf), deltas)
        if self.config.scene_sphere_background:
            # the last section starts on the scene sphere, which is opaque (the authors give it infinite length)
            alphas = torch.cat([alphas[..., :-1, :], torch.ones_like(alphas[..., -1:, :])], dim=-2)
        return alphas

    def extra_outputs(
        self, ray_bundle: RayBundle, ray_samples: RaySamples, field_outputs: Dict[str, Tensor], weights: Tensor
    ) -> Dict[str, Tensor]:
        outputs: Dict[str, Tensor] = {}
        if self.config.scene_sphere_background:
            inside = ray_samples.frustums.get_positions().norm(dim=-1, keepdim=True) < self.config.sphere_radius
            outputs["accumulation"] = (weights * inside).sum(dim=-2)
        if not self.training:
            metadata = ray_samples.metadata or {}
            num_rays = weights.shape[0]
            outputs["sampler_iterations"] = metadata["sampler_iterations"][:, 0, :]
            outputs["beta_plus"] = metadata["beta_plus"][:, 0, :]
            outputs["beta"] = self.density.beta().detach().expand(num_rays, 1)
        return outputs

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics_dict = super().get_metrics_dict(outputs, batch)
        metrics_dict["beta"] = self.density.beta().detach()
        return metrics_dict
