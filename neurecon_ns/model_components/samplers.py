"""Where each paper places samples along a ray.

A sampler is stateless apart from its config: it takes a `RayBundle` with `nears`/`fars` and a
level-set function `level_fn(points) -> values` (queried without gradient) and returns nerfstudio
`RaySamples` whose sections `[starts, ends]` tile the ray. The field is then evaluated once per
section, at its mid point.

- `NeuSSampler`: uniform samples, then rounds of importance sampling from the NeuS opacity with a
  fixed, doubling sharpness (NeuS sec. 3.4 and its official renderer's up-sampling).
- VolSDF's error-bounded sampler and UNISURF's root-finding sampler live beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple, Type

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.configs.base_config import InstantiateConfig

from neurecon_ns.model_components.sdf_to_density import neus_alpha

LevelFunction = Callable[[Float[Tensor, "*bs 3"]], Float[Tensor, "*bs"]]


def points_along_rays(ray_bundle: RayBundle, t: Float[Tensor, "num_rays num_samples"]) -> Float[Tensor, "num_rays num_samples 3"]:
    return ray_bundle.origins[:, None, :] + ray_bundle.directions[:, None, :] * t[..., None]


def uniform_t(
    nears: Float[Tensor, "num_rays 1"],
    fars: Float[Tensor, "num_rays 1"],
    num_samples: int,
    jitter: bool,
) -> Float[Tensor, "num_rays num_samples"]:
    """`num_samples` evenly spaced distances in [near, far); with `jitter`, one random shift per ray
    of up to half a step each way, as NeuS does (it keeps the spacing even)."""
    fractions = torch.linspace(0.0, 1.0, num_samples + 1, device=nears.device)[:-1]
    t = nears + (fars - nears) * fractions
    if jitter:
        step = (fars - nears) / num_samples
        t = t + (torch.rand_like(nears) - 0.5) * step
    return t


def sample_pdf(
    bins: Float[Tensor, "num_rays num_bins_plus_1"],
    weights: Float[Tensor, "num_rays num_bins"],
    num_samples: int,
    deterministic: bool,
    eps: float = 1e-5,
) -> Float[Tensor, "num_rays num_samples"]:
    """Inverse-transform sampling of the piecewise-constant density given by `weights` over `bins`."""
    pdf = weights + eps
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)
    if deterministic:
        u = torch.linspace(0.5 / num_samples, 1.0 - 0.5 / num_samples, num_samples, device=bins.device)
        u = u.expand(bins.shape[0], num_samples).contiguous()
    else:
        u = torch.rand(bins.shape[0], num_samples, device=bins.device).sort(dim=-1).values
    above = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
    below = (above - 1).clamp(min=0)
    cdf_below, cdf_above = cdf.gather(-1, below), cdf.gather(-1, above)
    bins_below, bins_above = bins.gather(-1, below), bins.gather(-1, above)
    span = cdf_above - cdf_below
    span = torch.where(span < eps, torch.ones_like(span), span)
    return bins_below + (u - cdf_below) / span * (bins_above - bins_below)


def merge_sorted(
    t: Float[Tensor, "num_rays n"], values: Float[Tensor, "num_rays n"], t_new: Float[Tensor, "num_rays m"], values_new: Optional[Float[Tensor, "num_rays m"]]
) -> Tuple[Float[Tensor, "num_rays n_plus_m"], Optional[Float[Tensor, "num_rays n_plus_m"]]]:
    """Merge new distances (and their level values, when known) into a sorted set."""
    t_all, order = torch.sort(torch.cat([t, t_new], dim=-1), dim=-1)
    if values_new is None:
        return t_all, None
    return t_all, torch.cat([values, values_new], dim=-1).gather(-1, order)


def sections_from_t(
    ray_bundle: RayBundle, t: Float[Tensor, "num_rays num_samples"], last_delta: Float[Tensor, "num_rays 1"]
) -> RaySamples:
    """Sections `[t_i, t_{i+1}]`, the last one `last_delta` long (NeuS's convention)."""
    ends = torch.cat([t[:, 1:], t[:, -1:] + last_delta], dim=-1)
    return ray_bundle.get_ray_samples(bin_starts=t[..., None], bin_ends=ends[..., None])


def neus_upsample(
    t: Float[Tensor, "num_rays n"],
    sdf: Float[Tensor, "num_rays n"],
    inside_sphere: Bool[Tensor, "num_rays n_minus_1"],
    num_new: int,
    inv_s: float,
) -> Float[Tensor, "num_rays num_new"]:
    """One round of NeuS's hierarchical sampling with a fixed sharpness `inv_s`.

    The SDF slope of each section is estimated by finite differences and taken as the steeper of
    this and the previous section (robust at the first crossing), clipped to be a descent; the
    section's end-point SDFs follow from its mid value, give NeuS opacities (eq. 13), and the new
    samples invert the CDF of the resulting weights.
    """
    delta = t[:, 1:] - t[:, :-1]
    sdf_mid = (sdf[:, 1:] + sdf[:, :-1]) * 0.5
    slope = (sdf[:, 1:] - sdf[:, :-1]) / (delta + 1e-5)
    slope_prev = torch.cat([torch.zeros_like(slope[:, :1]), slope[:, :-1]], dim=-1)
    slope = torch.minimum(slope, slope_prev).clamp(-1e3, 0.0) * inside_sphere
    sdf_prev = sdf_mid - slope * delta * 0.5
    sdf_next = sdf_mid + slope * delta * 0.5
    alpha = neus_alpha(sdf_prev, sdf_next, inv_s)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], dim=-1), dim=-1)
    weights = alpha * transmittance[:, :-1]
    return sample_pdf(t, weights, num_new, deterministic=True)


@dataclass
class NeuSSamplerConfig(InstantiateConfig):
    """NeuS's hierarchical sampler: uniform samples plus rounds of up-sampling (no network of its own)."""

    _target: Type = field(default_factory=lambda: NeuSSampler)
    num_uniform: int = 64
    """Evenly spaced samples per ray."""
    num_importance: int = 64
    """Samples added by up-sampling, split evenly over the rounds."""
    num_upsample_steps: int = 4
    """Rounds of up-sampling."""
    base_inv_s: float = 64.0
    """Sharpness of the first round; round i uses `base_inv_s * 2**i`."""
    jitter: bool = True
    """Randomly shift the uniform samples while training."""
    sphere_radius: float = 1.0
    """Only sections inside this sphere contribute to the up-sampling opacity."""


class NeuSSampler(nn.Module):
    config: NeuSSamplerConfig

    def __init__(self, config: NeuSSamplerConfig) -> None:
        super().__init__()
        self.config = config

    @torch.no_grad()
    def forward(self, ray_bundle: RayBundle, level_fn: LevelFunction) -> RaySamples:
        config = self.config
        assert ray_bundle.nears is not None and ray_bundle.fars is not None
        t = uniform_t(ray_bundle.nears, ray_bundle.fars, config.num_uniform, jitter=config.jitter and self.training)
        if config.num_importance > 0 and config.num_upsample_steps > 0:
            points = points_along_rays(ray_bundle, t)
            sdf = level_fn(points)
            per_step = config.num_importance // config.num_upsample_steps
            for step in range(config.num_upsample_steps):
                radius = points.norm(dim=-1)
                inside = (radius[:, :-1] < config.sphere_radius) | (radius[:, 1:] < config.sphere_radius)
                t_new = neus_upsample(t, sdf, inside, per_step, config.base_inv_s * 2**step)
                is_last = step == config.num_upsample_steps - 1
                sdf_new = None if is_last else level_fn(points_along_rays(ray_bundle, t_new))
                t, sdf = merge_sorted(t, sdf, t_new, sdf_new)
                if not is_last:
                    points = points_along_rays(ray_bundle, t)
        last_delta = (ray_bundle.fars - ray_bundle.nears) / config.num_uniform
        return sections_from_t(ray_bundle, t, last_delta)
