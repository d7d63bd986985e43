"""NeuS's opacity and up-sampling on analytic SDFs along single rays."""

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples

from neurecon_ns.model_components.samplers import (
    NeuSSamplerConfig,
    neus_upsample,
    sample_pdf,
    uniform_t,
)
from neurecon_ns.model_components.sdf_to_density import neus_alpha, neus_section_sdfs


def plane_sdf_along_ray(t: torch.Tensor, surface_t: float) -> torch.Tensor:
    """A ray hitting a plane head-on: the SDF falls linearly and crosses zero at `surface_t`."""
    return surface_t - t


def weights_from_sections(t_edges: torch.Tensor, sdf_fn, inv_s: float, eps: float = 1e-5) -> torch.Tensor:
    """NeuS weights of the sections between consecutive `t_edges`, SDF exact at the edges."""
    sdf_edges = sdf_fn(t_edges)
    alpha = neus_alpha(sdf_edges[:-1, None], sdf_edges[1:, None], inv_s, eps=eps)[None]
    return RaySamples.get_weights_and_transmittance_from_alphas(alpha, weights_only=True)[0, :, 0]


def test_weights_peak_at_the_zero_crossing_and_sum_to_at_most_one():
    t_edges = torch.linspace(0.0, 2.0, 401)
    for surface_t in (0.61, 1.0, 1.37):
        weights = weights_from_sections(t_edges, lambda t, surface_t=surface_t: plane_sdf_along_ray(t, surface_t), inv_s=64.0)
        mids = (t_edges[1:] + t_edges[:-1]) / 2
        assert abs(mids[weights.argmax()] - surface_t) <= 2.0 / 400
        assert torch.all(weights >= 0)
        assert weights.sum() <= 1.0 + 1e-4
        # an opaque surface: nearly all light stops there
        assert weights.sum() > 0.99


def test_neus_alpha_is_unbiased_for_a_plane():
    """For a plane (|cos| = 1) NeuS's weight density is the logistic density around the surface,
    symmetric about the crossing, so the expected depth equals the true depth (the paper's claim).
    The tiny `eps` that keeps the ratio finite is set far below float64 resolution of the terms here;
    with the default 1e-5 over 4000 sections it alone would add 2% of weight in front of the surface."""
    t_edges = torch.linspace(0.0, 2.0, 4001, dtype=torch.float64)
    surface_t = 1.123
    weights = weights_from_sections(t_edges, lambda t: plane_sdf_along_ray(t, surface_t), inv_s=200.0, eps=1e-30)
    mids = (t_edges[1:] + t_edges[:-1]) / 2
    expected_depth = (weights * mids).sum() / weights.sum()
    assert abs(expected_depth - surface_t) < 1e-3


def test_alpha_matches_the_logistic_cdf_ratio():
    inv_s = 30.0
    sdf_prev, sdf_next = torch.tensor([[0.05]]), torch.tensor([[-0.02]])
    cdf = lambda x: 1 / (1 + torch.exp(-inv_s * x))  # noqa: E731
    expected = (cdf(sdf_prev) - cdf(sdf_next)) / cdf(sdf_prev)
    assert torch.allclose(neus_alpha(sdf_prev, sdf_next, inv_s, eps=0.0), expected, atol=1e-6)
    # leaving the surface (SDF increasing) is transparent
    assert neus_alpha(sdf_next, sdf_prev, inv_s).item() < 1e-3


def test_section_sdfs_follow_the_slope_after_annealing():
    sdf = torch.tensor([[[0.1]]])
    cos = torch.tensor([[[-0.5]]])
    delta = torch.tensor([[[0.2]]])
    prev, nxt = neus_section_sdfs(sdf, cos, delta, cos_anneal_ratio=1.0)
    assert torch.allclose(prev, torch.tensor([[[0.15]]])) and torch.allclose(nxt, torch.tensor([[[0.05]]]))
    # at the start of training the slope is softened: (-cos/2 + 1/2) = 0.75
    prev0, _ = neus_section_sdfs(sdf, cos, delta, cos_anneal_ratio=0.0)
    assert torch.allclose(prev0, torch.tensor([[[0.1 + 0.75 * 0.1]]]))


def test_upsampling_concentrates_samples_at_the_surface():
    num_rays = 5
    surface_t = torch.linspace(0.7, 1.5, num_rays)[:, None]
    t = uniform_t(torch.zeros(num_rays, 1), torch.full((num_rays, 1), 2.0), 64, jitter=False)
    sdf = surface_t - t
    for step in range(4):
        inside = torch.ones(num_rays, t.shape[1] - 1, dtype=torch.bool)
        t_new = neus_upsample(t, sdf, inside, 16, 64.0 * 2**step)
        t, _ = torch.sort(torch.cat([t, t_new], dim=-1), dim=-1)
        sdf = surface_t - t
        near_surface = ((t_new - surface_t).abs() < 0.05).float().mean()
        # the first round sees only the coarse samples (spacing 0.03); later rounds sharpen
        assert near_surface > (0.8 if step == 0 else 0.95), f"round {step}: {near_surface:.2f} near the surface"
    assert t.shape == (num_rays, 128)


def test_upsampling_ignores_sections_outside_the_sphere():
    t = uniform_t(torch.zeros(1, 1), torch.full((1, 1), 2.0), 64, jitter=False)
    sdf = 0.5 - t  # a crossing at t = 0.5 ...
    inside = (t[:, 1:] > 1.0)  # ... but only the far half of the ray lies inside the sphere
    t_new = neus_upsample(t, sdf, inside, 16, 64.0)
    assert (t_new - 0.5).abs().min() > 0.1


def test_sample_pdf_inverts_the_cdf():
    bins = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    weights = torch.tensor([[0.0, 1.0, 0.0]])
    samples = sample_pdf(bins, weights, 100, deterministic=True)
    assert samples.min() >= 1.0 - 1e-3 and samples.max() <= 2.0 + 1e-3


def test_sampler_returns_sections_that_tile_the_ray():
    from neurecon_ns.model_components.samplers import NeuSSampler

    sampler = NeuSSampler(NeuSSamplerConfig(num_uniform=32, num_importance=32, num_upsample_steps=2))
    sampler.eval()
    origins = torch.tensor([[0.0, 0.0, -3.0], [0.2, 0.1, -3.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(2, 1),
                       nears=torch.full((2, 1), 2.0), fars=torch.full((2, 1), 4.0))
    samples = sampler(bundle, lambda points: points.norm(dim=-1) - 0.5)
    starts, ends = samples.frustums.starts[..., 0], samples.frustums.ends[..., 0]
    assert starts.shape == (2, 64)
    assert torch.allclose(ends[:, :-1], starts[:, 1:])
    assert torch.all(ends >= starts)
    # the up-sampled points gather at the sphere's front, t = 2.5 on the first ray
    assert ((starts[0] - 2.5).abs() < 0.05).sum() >= 24
