"""How each paper turns a level-set value along a ray into opacity.

- NeuS (Wang et al. 2021, eq. 13): discrete opacity of a section from the logistic CDF `Phi_s` of
  the SDF at its two end points, `alpha_i = max((Phi_s(f_i) - Phi_s(f_{i+1})) / Phi_s(f_i), 0)`.
- VolSDF (Yariv et al. 2021, eq. 2): density `sigma = alpha * Psi_beta(-d)`, the CDF of a zero-mean
  Laplace distribution with scale `beta`, and `alpha = 1 / beta`; and its sec. 3.3 bound on the
  opacity error of a sample set (`distance_lower_bound` ... `volsdf_beta_plus_init`, below).
- UNISURF (Oechsle et al. 2021, eq. 5): the occupancy probability itself is the alpha of a sample.

Pure functions on tensors of shape `[..., num_samples, 1]`; no network, no rays.
"""

from __future__ import annotations

import math
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
    """CDF of a zero-mean Laplace distribution with scale `beta` (VolSDF eq. 2):
    `Psi_beta(x) = exp(x / beta) / 2` for `x <= 0` and `1 - exp(-x / beta) / 2` for `x > 0`.

    Each branch sees only the inputs on its own side of 0 (0 elsewhere), so no exponent is ever
    positive: a `torch.where` over the raw branches overflows in the unused one for small `beta`
    and back-propagates NaN through it.
    """
    is_below = x <= 0
    zero = torch.zeros_like(x)
    below = 0.5 * torch.exp(torch.where(is_below, x, zero) / beta)
    above = 1.0 - 0.5 * torch.exp(-torch.where(is_below, zero, x) / beta)
    return torch.where(is_below, below, above)


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


# -- VolSDF's bound on the opacity error of a sample set (sec. 3.3, Theorems 1-2, Lemma 2) ----------
#
# Along a ray x(t) = o + t v with samples T = {t_0 < ... < t_{n-1}}, intervals delta_i = t_{i+1} - t_i,
# SDF values d_i = d(x(t_i)) and densities sigma_i = sigma(x(t_i)), the free energy
# R(t) = int_0^t sigma ds is approximated by the left rectangle rule
#     R^(t) = sum_{i<k} delta_i sigma_i + (t - t_k) sigma_k,      t in [t_k, t_{k+1}],
# and the opacity O(t) = 1 - exp(-R(t)) by O^(t) = 1 - exp(-R^(t)). The functions below take
# tensors of shape [num_rays, n] (per sample) and [num_rays, n - 1] (per interval).


def distance_lower_bound(
    sdf_start: Float[Tensor, "*bs num_intervals"],
    sdf_end: Float[Tensor, "*bs num_intervals"],
    deltas: Float[Tensor, "*bs num_intervals"],
) -> Float[Tensor, "*bs num_intervals"]:
    """VolSDF's `d*_i`: a lower bound of |d| on the segment [x(t_i), x(t_{i+1})] (Theorem 1).

    No surface point lies in the balls `B_i = B(x(t_i), |d_i|)` and `B_{i+1}`, so
    `d*_i = min_{s in [t_i, t_{i+1}]} dist(x(s), complement of (B_i u B_{i+1}))`. With the triangle
    sides `a = delta_i`, `b = |d_i|`, `c = |d_{i+1}|`:
      - 0 if the SDF changes sign (the surface may cross the interval) or `b + c <= a` (the balls
        leave part of the segment uncovered);
      - `b` if `a^2 + b^2 <= c^2`, `c` if `a^2 + c^2 <= b^2` (one ball reaches past the other end:
        the nearest uncovered point is closest to the centre of the smaller ball);
      - otherwise the height of the triangle over side `a`, `h = 2 sqrt(p (p-a) (p-b) (p-c)) / a`
        with `p = (a + b + c) / 2` (Heron): the closest approach to the circle where the two
        spheres meet.
    """
    a, b, c = deltas, sdf_start.abs(), sdf_end.abs()
    half_perimeter = (a + b + c) / 2
    area_squared = half_perimeter * (half_perimeter - a) * (half_perimeter - b) * (half_perimeter - c)
    height = 2.0 * area_squared.clamp(min=0.0).sqrt() / a.clamp(min=1e-12)
    d_star = torch.where(a**2 + b**2 <= c**2, b, torch.where(a**2 + c**2 <= b**2, c, height))
    same_sign = sdf_start * sdf_end > 0
    return torch.where(same_sign & (b + c > a), d_star, torch.zeros_like(d_star))


def volsdf_interval_error(
    deltas: Float[Tensor, "*bs num_intervals"],
    d_star: Float[Tensor, "*bs num_intervals"],
    beta: Union[Tensor, float],
) -> Float[Tensor, "*bs num_intervals"]:
    """Theorem 1, one interval's term: `(alpha / (4 beta)) delta_i^2 exp(-d*_i / beta)`, `alpha = 1 / beta`.

    The density's derivative along the ray is at most `(alpha / (2 beta)) exp(-d*_i / beta)` on the
    interval (the Laplace density times |d'| <= 1), and the rectangle rule errs by at most half of
    that times `delta_i^2`.
    """
    return deltas**2 * torch.exp(-d_star / beta) / (4.0 * beta**2)


def volsdf_free_energy_estimate(
    sdf: Float[Tensor, "*bs num_samples"], deltas: Float[Tensor, "*bs num_intervals"], beta: Union[Tensor, float]
) -> Float[Tensor, "*bs num_samples"]:
    """`R^(t_k) = sum_{i<k} delta_i sigma_i` at every sample (0 at `t_0`), sigma from `volsdf_density`."""
    free_energy = deltas * volsdf_density(sdf[..., :-1], beta)
    return torch.cat([torch.zeros_like(sdf[..., :1]), torch.cumsum(free_energy, dim=-1)], dim=-1)


def volsdf_error_integral(
    deltas: Float[Tensor, "*bs num_intervals"], d_star: Float[Tensor, "*bs num_intervals"], beta: Union[Tensor, float]
) -> Float[Tensor, "*bs num_samples"]:
    """Theorem 1: `E^(t_k) = sum_{i<k} (alpha / (4 beta)) delta_i^2 exp(-d*_i / beta)` bounds `|R(t_k) - R^(t_k)|`."""
    error = volsdf_interval_error(deltas, d_star, beta)
    return torch.cat([torch.zeros_like(error[..., :1]), torch.cumsum(error, dim=-1)], dim=-1)


MAX_ERROR_EXPONENT = 30.0
"""`E^` is clamped here before `exp` (the bound is then ~1e13, far above any eps, and finite)."""


def volsdf_opacity_error_bound(
    sdf: Float[Tensor, "*bs num_samples"],
    deltas: Float[Tensor, "*bs num_intervals"],
    d_star: Float[Tensor, "*bs num_intervals"],
    beta: Union[Tensor, float],
) -> Float[Tensor, "*bs"]:
    """Theorem 2: `B_{T,beta} = max_k exp(-R^(t_k)) (exp(E^(t_{k+1})) - 1) >= max_t |O(t) - O^(t)|`.

    On `[t_k, t_{k+1}]`, `|O - O^| = exp(-R^) |1 - exp(R^ - R)| <= exp(-R^(t)) (exp(E^(t)) - 1)`, and
    `R^` grows while `E^` grows, so each interval is bounded by its start's `R^` and its end's `E^`.
    """
    free_energy = volsdf_free_energy_estimate(sdf, deltas, beta)
    error_integral = volsdf_error_integral(deltas, d_star, beta).clamp(max=MAX_ERROR_EXPONENT)
    per_interval = torch.exp(-free_energy[..., :-1]) * torch.expm1(error_integral[..., 1:])
    return per_interval.max(dim=-1).values


def volsdf_beta_plus_init(deltas: Float[Tensor, "*bs num_intervals"], eps: float) -> Float[Tensor, "*bs 1"]:
    """Lemma 2: `beta+ = sqrt(sum_i delta_i^2 / (4 log(1 + eps)))` gives `B_{T,beta+} <= eps` for any SDF.

    With `d* >= 0` and `exp(-R^) <= 1`, `B <= exp(sum delta_i^2 / (4 beta^2)) - 1`, which equals eps there.
    """
    return torch.sqrt((deltas**2).sum(dim=-1, keepdim=True) / (4.0 * math.log1p(eps)))
