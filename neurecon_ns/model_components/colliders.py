"""Ray bounds for models whose object of interest lies in a sphere around the origin.

Three colliders, one per way a method bounds its rays: `UnitSphereCollider` (NeuS's segment around the
closest approach), `SphereChordCollider` (the exact chord, where a NeRF++ background takes over at the far
side) and `SceneSphereCollider` (VolSDF's rays that end on the scene sphere). The geometry they share is
`ray_sphere_intersections`.
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.scene_colliders import SceneCollider
from torch import Tensor


def ray_sphere_intersections(
    origins: Float[Tensor, "*bs 3"], directions: Float[Tensor, "*bs 3"], radius: float
) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs 1"]]:
    """Where a ray `o + t v` enters and leaves the sphere `|x| = radius`: the roots of `|o + t v|^2 = radius^2`,

        t = (-o.v -/+ sqrt((o.v)^2 - |v|^2 (|o|^2 - radius^2))) / |v|^2.

    A ray that misses the sphere gets both at its closest approach (the discriminant is clamped to 0)."""
    dir_dot_dir = (directions * directions).sum(-1, keepdim=True)
    origin_dot_dir = (origins * directions).sum(-1, keepdim=True)
    origin_dot_origin = (origins * origins).sum(-1, keepdim=True)
    half_chord = (origin_dot_dir**2 - dir_dot_dir * (origin_dot_origin - radius**2)).clamp(min=0.0).sqrt()
    return (-origin_dot_dir - half_chord) / dir_dot_dir, (-origin_dot_dir + half_chord) / dir_dot_dir


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


def sphere_chord(
    origins: Float[Tensor, "*bs 3"], directions: Float[Tensor, "*bs 3"], radius: float, near_plane: float
) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs 1"]]:
    """The ray's chord through the sphere `|x| = radius`, `near` clamped to `near_plane` (a camera inside the sphere
    starts in front of itself) and `far` just beyond `near` for a ray that misses (an empty chord at its closest
    approach)."""
    t_enter, t_exit = ray_sphere_intersections(origins, directions, radius)
    nears = t_enter.clamp(min=near_plane)
    return nears, torch.maximum(t_exit, nears + 1e-4)


class SphereChordCollider(UnitSphereCollider):
    """Foreground rays run exactly over their chord through the sphere, so a background can start at `far`."""

    def set_nears_and_fars(self, ray_bundle: RayBundle) -> RayBundle:
        ray_bundle.nears, ray_bundle.fars = sphere_chord(
            ray_bundle.origins, ray_bundle.directions, self.radius, self.near_plane
        )
        return ray_bundle


class SceneSphereCollider(UnitSphereCollider):
    """Rays start where the object's sphere begins (as NeuS's do) and end where they leave the scene sphere.

    The whole segment lies inside the scene sphere (radius `scene_radius` > `radius`), so the
    background surface `R - |x| = 0` is met only at its far end, wherever the camera is.
    """

    def __init__(self, radius: float, scene_radius: float, near_plane: float = 0.0, **kwargs) -> None:
        super().__init__(radius=radius, near_plane=near_plane, **kwargs)
        self.scene_radius = scene_radius

    def set_nears_and_fars(self, ray_bundle: RayBundle) -> RayBundle:
        ray_bundle = super().set_nears_and_fars(ray_bundle)
        assert ray_bundle.nears is not None
        _, exit_distance = ray_sphere_intersections(ray_bundle.origins, ray_bundle.directions, self.scene_radius)
        ray_bundle.fars = torch.maximum(exit_distance, ray_bundle.nears + 1e-4)
        return ray_bundle
