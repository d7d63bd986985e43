"""How each paper turns a level-set value along a ray into opacity.

- NeuS (Wang et al. 2021, eq. 13): discrete opacity of a section from the logistic CDF `Phi_s` of
  the SDF at its two end points, `alpha_i = max((Phi_s(f_i) - Phi_s(f_{i+1})) / Phi_s(f_i), 0)`.
- VolSDF (Yariv et al. 2021, eq. 2): density `sigma = alpha * Psi_beta(-d)`, the CDF of a zero-mean
  Laplace distribution with scale `beta`, and `alpha = 1 / beta`.
- UNISURF (Oechsle et al. 2021, eq. 5): the occupancy probability itself is the alpha of a sample.

Pure functions on tensors of shape `[..., num_samples, 1]`; no network, no rays.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
from jaxtyping import Float
from torch import Tensor


def neus_section_sdfs(
    sdf: Float[Tensor, "*bs num_samples 1"],
    cos_view_normal: Float[Tensor, "*bs num_samples 1"],
    deltas: Float[Tensor, "*bs num_samples 1"],
    cos_anneal_ratio: float,
) -> Tuple[Float[Tensor, "*bs num_samples 1"], Float[Tensor, "*bs num_samples 1"]]:
    """SDF at the two end points of each section, extrapolated from its mid point.

    NeuS evaluates the network once per section, at its mid point, and estimates
    `f_{prev,next} = f_mid -/+ cos * delta / 2` along the ray. `cos` is the cosine between the
    ray and the SDF gradient; it is forced negative (the ray enters the surface) and annealed from
    a softened `-relu(-cos/2 + 1/2)` at the start of training to the exact `-relu(-cos)` so that
    early training is not stuck by back faces.
    """
    softened = torch.relu(-cos_view_normal * 0.5 + 0.5)
    exact = torch.relu(-cos_view_normal)
    slope = -(softened * (1.0 - cos_anneal_ratio) + exact * cos_anneal_ratio)
    sdf_prev = sdf - slope * deltas * 0.5
    sdf_next = sdf + slope * deltas * 0.5
    return sdf_prev, sdf_next


def neus_alpha(
    sdf_prev: Float[Tensor, "*bs num_samples 1"],
    sdf_next: Float[Tensor, "*bs num_samples 1"],
    inv_s: Union[Float[Tensor, "*bs 1"], float],
    eps: float = 1e-5,
) -> Float[Tensor, "*bs num_samples 1"]:
    """NeuS eq. 13: `alpha = clamp((Phi_s(f_prev) - Phi_s(f_next)) / Phi_s(f_prev), 0, 1)`.

    `Phi_s(x) = sigmoid(s * x)` is the logistic CDF with inverse standard deviation `inv_s`.
    The small `eps` keeps the ratio finite where `Phi_s(f_prev)` underflows (deep inside).
    """
    cdf_prev = torch.sigmoid(sdf_prev * inv_s)
    cdf_next = torch.sigmoid(sdf_next * inv_s)
    return ((cdf_prev - cdf_next + eps) / (cdf_prev + eps)).clamp(0.0, 1.0)


def laplace_cdf(x: Tensor, beta: Union[Tensor, float]) -> Tensor:
    """CDF of a zero-mean Laplace distribution with scale `beta` (VolSDF eq. 2)."""
    return torch.where(x <= 0, 0.5 * torch.exp(x / beta), 1.0 - 0.5 * torch.exp(-x / beta))


def volsdf_density(sdf: Tensor, beta: Union[Tensor, float]) -> Tensor:
    """VolSDF eq. 2: `sigma(x) = alpha * Psi_beta(-d(x))` with `alpha = 1 / beta`."""
    return laplace_cdf(-sdf, beta) / beta


def alpha_from_density(
    density: Float[Tensor, "*bs num_samples 1"], deltas: Float[Tensor, "*bs num_samples 1"]
) -> Float[Tensor, "*bs num_samples 1"]:
    """Opacity of a section of constant density: `1 - exp(-sigma * delta)`."""
    return 1.0 - torch.exp(-density * deltas)


def unisurf_alpha(occupancy_logit: Float[Tensor, "*bs num_samples 1"]) -> Float[Tensor, "*bs num_samples 1"]:
    """UNISURF eq. 5: the occupancy probability `o(x) = sigmoid(logit)` is the alpha of the sample."""
    return torch.sigmoid(occupancy_logit)
