"""Ray bounds for models whose object of interest lies in a sphere around the origin."""

from __future__ import annotations

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.scene_colliders import SceneCollider
from torch import Tensor


def near_far_from_sphere(
    origins: Float[Tensor, "*bs 3"], directions: Float[Tensor, "*bs 3"], radius: float, near_plane: float
) -> tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs 1"]]:
    """The segment of length `2 * radius` centred on the ray's closest approach to the origin.

    It contains the ray's chord through the sphere, and it stays well defined for rays that miss
    the sphere (they then see only empty space), as in NeuS. `near` is clamped to `near_plane`
    so that cameras inside the sphere start sampling in front of themselves.
    """
    closest = -(origins * directions).sum(-1, keepdim=True) / (directions * directions).sum(-1, keepdim=True)
    step = radius / directions.norm(dim=-1, keepdim=True)
    nears = (closest - step).clamp(min=near_plane)
    fars = torch.maximum(closest + step, nears + 1e-4)
    return nears, fars


class UnitSphereCollider(SceneCollider):
    """Sets `nears`/`fars` of a ray bundle with `near_far_from_sphere`."""

    def __init__(self, radius: float = 1.0, near_plane: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.radius = radius
        self.near_plane = near_plane

    def set_nears_and_fars(self, ray_bundle: RayBundle) -> RayBundle:
        ray_bundle.nears, ray_bundle.fars = near_far_from_sphere(
            ray_bundle.origins, ray_bundle.directions, self.radius, self.near_plane
        )
        return ray_bundle
