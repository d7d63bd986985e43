"""Rays split at the unit sphere: the surface inside, NeRF++'s background outside (Zhang et al. 2020, sec. 4).

Along a camera ray the foreground is the chord through the sphere of radius `R` (the object's
region); the background is the rest of the ray beyond the sphere's far side, out to infinity.
The space between a camera and the sphere is free space (the cameras stand in it). The
background is sampled uniformly in inverse distance `R / r` from the sphere (`R / r = 1`) to
infinity (`R / r = 0`), NeRF++'s inverted-sphere parameterisation, and composited behind the
foreground:

    C(ray) = C_fg + (1 - A_fg) * C_bg,

with `C_fg`, `A_fg` the colour and opacity composited over the chord and `C_bg` the colour
composited over the background samples. This is exact volume rendering when the chord ends where
the background starts, which `colliders.SphereChordCollider` guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor


def inverse_radius_samples(
    start: Float[Tensor, "num_rays 1"], num_samples: int, jitter: bool
) -> Tuple[Float[Tensor, "num_rays num_samples"], Float[Tensor, "num_rays num_samples"]]:
    """Samples of the inverse radius `u = R / r` from `start` (where the background begins) to 0 (infinity),
    and the length in `u` of the section each one stands for.

    `[0, start]` is cut into `N - 1` equal sections `[e_{k+1}, e_k]`, `e_k = start (1 - k / (N - 1))`; sample
    `k` lies at `e_k - xi_k (e_k - e_{k+1})`, `xi_k` uniform in [0, 1) when jittering and 0 otherwise. The
    last sample is the sphere at infinity, `u = 0`, with an infinite section: it is opaque, so every ray
    ends on the environment.
    """
    num_rays = start.shape[0]
    num_sections = max(num_samples - 1, 1)
    offsets = torch.arange(num_samples - 1, device=start.device, dtype=start.dtype).expand(num_rays, -1)
    if jitter:
        offsets = offsets + torch.rand_like(offsets)
    section_length = start / num_sections
    inverse_radii = torch.cat([start - offsets * section_length, torch.zeros_like(start)], dim=-1)
    lengths = torch.cat(
        [section_length.expand(-1, num_samples - 1), torch.full_like(start, float("inf"))], dim=-1
    )
    return inverse_radii, lengths


def inverted_points_along_rays(
    origins: Float[Tensor, "num_rays 3"], directions: Float[Tensor, "num_rays 3"], inverse_radii: Float[Tensor, "num_rays num_samples"]
) -> Float[Tensor, "num_rays num_samples 4"]:
    """Inverted-sphere coordinates `(x / r, u)`, `u = 1 / r`, of the points of the rays (unit sphere, unit
    directions `v`) where they reach radius `r` on the way out.

    `x = o + t v` with `t = -o.v + sqrt(r^2 - h^2)`, `h^2 = |o|^2 - (o.v)^2`; written with `u` only,
    `x / r = u o + (u t) v` and `u t = -u (o.v) + sqrt(1 - u^2 h^2)`, which stay finite at `u = 0`
    (there `x / r = v`, the ray's direction). Valid for `u <= 1 / h`.
    """
    origin_dot_dir = (origins * directions).sum(-1, keepdim=True)
    closest_distance_sq = ((origins * origins).sum(-1, keepdim=True) - origin_dot_dir**2).clamp(min=0.0)
    u_times_t = -inverse_radii * origin_dot_dir + (1.0 - inverse_radii**2 * closest_distance_sq).clamp(min=0.0).sqrt()
    unit_points = inverse_radii[..., None] * origins[:, None, :] + u_times_t[..., None] * directions[:, None, :]
    return torch.cat([unit_points, inverse_radii[..., None]], dim=-1)


def background_start(
    origins: Float[Tensor, "num_rays 3"], directions: Float[Tensor, "num_rays 3"]
) -> Float[Tensor, "num_rays 1"]:
    """Inverse radius where the background of a ray (unit sphere, unit directions) starts: 1 on the sphere's
    far side; for a ray that misses the sphere, `1 / r` at its point nearest to the origin in front of the
    camera (the closest approach `h`, or the camera itself when the ray heads away)."""
    origin_dot_dir = (origins * directions).sum(-1, keepdim=True)
    closest_t = (-origin_dot_dir).clamp(min=0.0)
    nearest_radius_sq = (origins * origins).sum(-1, keepdim=True) - 2.0 * closest_t * (-origin_dot_dir) + closest_t**2
    return 1.0 / nearest_radius_sq.clamp(min=1.0).sqrt()


def weights_from_alphas(alphas: Float[Tensor, "*bs num_samples 1"]) -> Float[Tensor, "*bs num_samples 1"]:
    """Compositing weights `w_k = alpha_k prod_{j<k} (1 - alpha_j)`."""
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alphas[..., :1, :]), 1.0 - alphas[..., :-1, :]], dim=-2), dim=-2)
    return alphas * transmittance


def background_alphas(
    density: Float[Tensor, "*bs num_samples 1"], lengths: Float[Tensor, "*bs num_samples 1"]
) -> Float[Tensor, "*bs num_samples 1"]:
    """`alpha_k = 1 - exp(-sigma_k Delta u_k)` with sections measured in inverse radius (as NeRF++'s
    code does, which keeps them bounded); the infinite last section is opaque."""
    finite = torch.isfinite(lengths)
    alphas = 1.0 - torch.exp(-density * torch.where(finite, lengths, torch.zeros_like(lengths)))
    return torch.where(finite, alphas, torch.ones_like(alphas))


def composite_behind(
    foreground_rgb: Float[Tensor, "*bs 3"], foreground_accumulation: Float[Tensor, "*bs 1"], background_rgb: Float[Tensor, "*bs 3"]
) -> Float[Tensor, "*bs 3"]:
    """`C = C_fg + (1 - A_fg) C_bg`: the background is seen through what the foreground leaves transparent."""
    return foreground_rgb + (1.0 - foreground_accumulation) * background_rgb


@dataclass
class BackgroundSamples:
    """Samples of the background of a batch of rays, in inverted-sphere coordinates."""

    coordinates: Float[Tensor, "num_rays num_samples 4"]
    """`(x / r, R / r)` of each sample."""
    directions: Float[Tensor, "num_rays num_samples 3"]
    """Unit view direction of each sample."""
    lengths: Float[Tensor, "num_rays num_samples 1"]
    """Length of each sample's section in inverse radius (infinite for the last one)."""


def sample_background(ray_bundle: RayBundle, sphere_radius: float, num_samples: int, jitter: bool) -> BackgroundSamples:
    """`num_samples` samples uniform in inverse radius beyond the sphere of `sphere_radius`, to infinity."""
    origins = ray_bundle.origins / sphere_radius
    directions = torch.nn.functional.normalize(ray_bundle.directions, dim=-1)
    start = background_start(origins, directions)
    inverse_radii, lengths = inverse_radius_samples(start, num_samples, jitter)
    coordinates = inverted_points_along_rays(origins, directions, inverse_radii)
    return BackgroundSamples(
        coordinates=coordinates,
        directions=directions[:, None, :].expand(-1, num_samples, -1),
        lengths=lengths[..., None],
    )
