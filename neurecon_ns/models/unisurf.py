"""UNISURF: Unifying Neural Implicit Surfaces and Radiance Fields (Oechsle, Peng and Geiger, ICCV 2021).

What UNISURF adds to the shared surface model:
- the geometry network predicts occupancy `o(x) = sigmoid(logit(x))`, the surface is `o = 0.5`
  (logit 0), and `o` itself is the alpha of a sample in the compositing sum (eq. 5); the logit is
  `logit_scale` times the network's level value, positive inside;
- samples around the first surface crossing found by root finding, in an interval
  `[t_s - Delta_k, t_s + Delta_k]` that shrinks during training (sec. 3.3, eq. 10), plus samples in
  the free space before it;
- the normal smoothness loss `|n(x_s) - n(x_s + eps)|` at surface points (eq. 11), and no eikonal term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Type

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from torch import Tensor

from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, SurfaceFieldConfig
from neurecon_ns.model_components.root_finding import find_first_root
from neurecon_ns.model_components.samplers import UnisurfSamplerConfig, unisurf_interval
from neurecon_ns.model_components.sdf_to_density import unisurf_alpha
from neurecon_ns.models.surface_model import SurfaceModel, SurfaceModelConfig


@dataclass
class UnisurfModelConfig(SurfaceModelConfig):
    """UNISURF: occupancy field, occupancy as alpha, root-finding sampler with a shrinking interval."""

    _target: Type = field(default_factory=lambda: UnisurfModel)
    networks: SurfaceFieldConfig = field(
        default_factory=lambda: SurfaceFieldConfig(geometry=GeometryNetworkConfig(inside_out=True))
    )
    """Geometry and radiance networks; `inside_out` makes the initial sphere's level value positive inside."""
    sampler: UnisurfSamplerConfig = field(default_factory=UnisurfSamplerConfig)
    """Root finding, interval schedule and sample counts."""
    logit_scale: float = 10.0
    """The occupancy logit is this times the geometry network's level value: with 10 the initial sphere's
    occupancy goes from 0.99 to 0.01 within 0.46 of its surface."""
    eikonal_loss_weight: float = 0.0
    """UNISURF has no eikonal term."""
    normal_smoothness_loss_weight: float = 0.005
    """Weight of `mean |n(x_s) - n(x_s + eps)|` over the surface points of the batch."""
    normal_perturbation: float = 0.01
    """`eps` is uniform in a cube of this side centred on 0 (training-space units)."""


class UnisurfModel(SurfaceModel):
    config: UnisurfModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.sampler = self.config.sampler.setup()
        self.interval = self.config.sampler.interval_max

    def occupancy_logit(self, points: Tensor) -> Tensor:
        """`logit(x)`, positive inside; occupancy is its sigmoid."""
        return self.config.logit_scale * self.field.get_level_value(points)[..., 0]

    def level_set(self, points: Tensor) -> Tensor:
        """The negated logit: negative inside, zero where occupancy is 0.5 (what the mesh tools extract)."""
        return -self.occupancy_logit(points)

    def update_to_step(self, step: int) -> None:
        sampler = self.config.sampler
        self.interval = unisurf_interval(step, sampler.interval_max, sampler.interval_min, sampler.interval_decay)

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.update_to_step,
            )
        ]

    def sample_along_rays(self, ray_bundle: RayBundle) -> RaySamples:
        return self.sampler(ray_bundle, self.level_set, self.interval)

    def get_alphas(self, ray_samples: RaySamples, field_outputs: Dict[str, Tensor]) -> Tensor:
        """Eq. 5: alpha is the occupancy at the sample; zero-length sections (free-space samples that
        collapsed onto the near bound) hold no sample."""
        occupancy = unisurf_alpha(self.config.logit_scale * field_outputs["level"])
        assert ray_samples.deltas is not None
        return occupancy * (ray_samples.deltas > 0)

    def find_surface(self, ray_bundle: RayBundle):
        """Surface rendering: the occupancy crossing 0.5 by root finding (the logit is no distance)."""
        assert ray_bundle.nears is not None and ray_bundle.fars is not None
        return find_first_root(
            self.level_set,
            ray_bundle.origins,
            ray_bundle.directions,
            ray_bundle.nears,
            ray_bundle.fars,
            self.config.root_search_steps,
            self.config.root_secant_steps,
        )

    def surface_normals(self, gradient: Tensor) -> Tensor:
        """The logit grows inward: the outward normal is its negated, normalised gradient."""
        return -F.normalize(gradient, dim=-1)

    def extra_outputs(
        self, ray_bundle: RayBundle, ray_samples: RaySamples, field_outputs: Dict[str, Tensor], weights: Tensor
    ) -> Dict[str, Tensor]:
        normal = (weights * self.surface_normals(field_outputs["gradient"])).sum(dim=-2)
        outputs = {"normal": (normal + 1.0) / 2.0}
        if self.training and self.config.normal_smoothness_loss_weight > 0:
            outputs["normal_difference"] = self.normal_difference(ray_bundle, ray_samples)
        return outputs

    def normal_difference(self, ray_bundle: RayBundle, ray_samples: RaySamples) -> Tensor:
        """`|n(x_s) - n(x_s + eps)|` at the surface points `x_s` of the rays that hit, `[num_hits]`."""
        assert ray_samples.metadata is not None
        hit = ray_samples.metadata["surface_hit"][:, 0, 0] > 0
        surface_t = ray_samples.metadata["surface_t"][:, 0]
        surface_points = (ray_bundle.origins + ray_bundle.directions * surface_t)[hit]
        eps = (torch.rand_like(surface_points) - 0.5) * self.config.normal_perturbation
        _, _, gradient = self.field.get_level_value_and_gradient(torch.cat([surface_points, surface_points + eps]))
        normals = F.normalize(gradient, dim=-1)
        num_hits = surface_points.shape[0]
        return (normals[:num_hits] - normals[num_hits:]).norm(dim=-1)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        difference = outputs.get("normal_difference")
        if self.training and difference is not None:
            # a batch in which no ray hits has no surface point to regularise
            mean_difference = difference.mean() if difference.numel() > 0 else difference.sum()
            loss_dict["normal_smoothness_loss"] = self.config.normal_smoothness_loss_weight * mean_difference
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics_dict = super().get_metrics_dict(outputs, batch)
        metrics_dict["interval"] = torch.tensor(self.interval)
        if self.training and "normal_difference" in outputs:
            metrics_dict["surface_hit_fraction"] = torch.tensor(
                outputs["normal_difference"].numel() / max(outputs["rgb"].shape[0], 1)
            )
        return metrics_dict
