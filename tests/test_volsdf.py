"""VolSDF: Laplace density, the opacity error bound of sec. 3.3, Algorithm 1, the model, and training.

Analytic rays (a plane crossed at a known depth, a sphere hit, grazed and missed) give the exact
density along each ray; the true opacity comes from dense numerical integration in float64.
"""

import math
import shutil
from typing import Callable, Tuple

import pytest
import torch
from helpers import bin_path, ns_render_interpolate, run_tool, train_tiny
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor

from neurecon_ns.errors import UserInputError
from neurecon_ns.model_components.colliders import ray_sphere_intersections
from neurecon_ns.model_components.samplers import (
    ErrorBoundedSamplerConfig,
    bisect_beta_plus,
    error_bounded_sampling,
    volsdf_opacity_increments,
)
from neurecon_ns.model_components.sdf_to_density import (
    distance_lower_bound,
    laplace_cdf,
    volsdf_beta_plus_init,
    volsdf_density,
    volsdf_error_integral,
    volsdf_free_energy_estimate,
    volsdf_opacity_error_bound,
)
from neurecon_ns.models.volsdf import VolSDFModelConfig

EPS = 0.1
SdfAlongRay = Callable[[Tensor], Tensor]


# -- analytic rays -------------------------------------------------------------------------------


def plane_rays(num_rays: int = 6) -> Tuple[SdfAlongRay, Tensor, Tensor]:
    """Rays on [0, 4] crossing a plane at t = 1.7, at incidence angles from 0 to 75 degrees:
    `d(t) = (1.7 - t) cos(theta)`."""
    cosines = torch.cos(torch.linspace(0.0, math.radians(75.0), num_rays, dtype=torch.float64))[:, None]
    nears = torch.zeros(num_rays, 1, dtype=torch.float64)
    fars = torch.full((num_rays, 1), 4.0, dtype=torch.float64)
    return (lambda t: (1.7 - t) * cosines.to(t.dtype)), nears, fars


def sphere_rays(num_rays: int = 8) -> Tuple[SdfAlongRay, Tensor, Tensor]:
    """Rays from (0, 0, 2.5) towards a sphere of radius 0.6 at the origin, aimed at offsets 0 to 0.8
    from its centre: central hits, grazing hits and misses. Segment [0.5, 4.5]."""
    origins = torch.tensor([[0.0, 0.0, 2.5]], dtype=torch.float64).expand(num_rays, 3)
    offsets = torch.linspace(0.0, 0.8, num_rays, dtype=torch.float64)
    targets = torch.stack([offsets, torch.zeros_like(offsets), torch.zeros_like(offsets)], dim=-1)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)

    def sdf(t: Tensor) -> Tensor:
        points = origins.to(t.dtype)[:, None, :] + directions.to(t.dtype)[:, None, :] * t[..., None]
        return points.norm(dim=-1) - 0.6

    nears = torch.full((num_rays, 1), 0.5, dtype=torch.float64)
    fars = torch.full((num_rays, 1), 4.5, dtype=torch.float64)
    return sdf, nears, fars


def dense_opacity(sdf_fn: SdfAlongRay, nears: Tensor, fars: Tensor, beta: float, num: int = 200_001):
    """`O(t) = 1 - exp(-int_near^t sigma)` on a fine grid (trapezoid rule, float64)."""
    fractions = torch.linspace(0.0, 1.0, num, dtype=torch.float64)
    t = nears + (fars - nears) * fractions
    sigma = volsdf_density(sdf_fn(t), beta)
    steps = (t[:, 1:] - t[:, :-1]) * (sigma[:, 1:] + sigma[:, :-1]) / 2
    free_energy = torch.cat([torch.zeros_like(t[:, :1]), torch.cumsum(steps, dim=-1)], dim=-1)
    return t, free_energy, 1.0 - torch.exp(-free_energy)


def approximate_opacity(t_samples: Tensor, sdf_samples: Tensor, beta, t_query: Tensor) -> Tensor:
    """`O^(t) = 1 - exp(-R^(t))`, `R^(t) = R^(t_k) + (t - t_k) sigma_k` on [t_k, t_{k+1}] (left rectangle rule)."""
    t_samples, sdf_samples = t_samples.double(), sdf_samples.double()
    deltas = t_samples[:, 1:] - t_samples[:, :-1]
    free_energy = volsdf_free_energy_estimate(sdf_samples, deltas, beta)
    index = (torch.searchsorted(t_samples.contiguous(), t_query.contiguous(), right=True) - 1).clamp(min=0)
    sigma = volsdf_density(sdf_samples, beta)
    t_k = t_samples.gather(-1, index)
    return 1.0 - torch.exp(-(free_energy.gather(-1, index) + (t_query - t_k) * sigma.gather(-1, index)))


def uniform_samples(nears: Tensor, fars: Tensor, num: int) -> Tensor:
    return nears + (fars - nears) * torch.linspace(0.0, 1.0, num, dtype=nears.dtype)


def bound_inputs(sdf_fn: SdfAlongRay, t: Tensor):
    sdf = sdf_fn(t)
    deltas = t[:, 1:] - t[:, :-1]
    return sdf, deltas, distance_lower_bound(sdf[:, :-1], sdf[:, 1:], deltas)


ANALYTIC_RAYS = {"plane": plane_rays, "sphere": sphere_rays}


# -- the density -----------------------------------------------------------------------------------


def test_laplace_density_values():
    beta = 0.05
    sdf = torch.tensor([-10.0, -0.1, 0.0, 0.1, 10.0], dtype=torch.float64)
    expected = torch.tensor(
        [1.0, 1.0 - 0.5 * math.exp(-2.0), 0.5, 0.5 * math.exp(-2.0), 0.0], dtype=torch.float64
    ) / beta
    assert torch.allclose(volsdf_density(sdf, beta), expected, atol=1e-12)
    # Psi is a CDF: Psi(x) + Psi(-x) = 1
    x = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(laplace_cdf(x, beta) + laplace_cdf(-x, beta), torch.ones_like(x))


def test_laplace_density_gradient_is_finite_for_small_beta():
    """Deep inside or far outside with beta at its floor, the gradient is finite (no overflow in either branch)."""
    sdf = torch.linspace(-3.0, 3.0, 601, requires_grad=True)
    volsdf_density(sdf, torch.tensor(1e-4)).sum().backward()
    assert torch.isfinite(sdf.grad).all()
    # at the surface the derivative is the Laplace pdf, -1 / (2 beta^2)
    at_surface = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    volsdf_density(at_surface, 0.1).backward()
    assert at_surface.grad.item() == pytest.approx(-0.5 / 0.1**2)


# -- d*, Theorem 1, Theorem 2, Lemma 2 -------------------------------------------------------------


def test_distance_lower_bound_geometric_cases():
    # (a, |d_i|, |d_i+1|) -> d*
    deltas = torch.tensor([2.0, 1.0, 1.0, 3.0, 1.0])
    sdf_start = torch.tensor([math.sqrt(2.0), 1.0, 2.0, 1.0, 0.5])
    sdf_end = torch.tensor([math.sqrt(2.0), 2.0, 1.0, 1.0, -0.5])
    d_star = distance_lower_bound(sdf_start, sdf_end, deltas)
    # equal balls 2 apart with radius sqrt(2) meet on a circle of radius 1 around the segment
    assert d_star[0].item() == pytest.approx(1.0, abs=1e-6)
    # the larger ball contains the far end: nearest uncovered point is on the smaller ball
    assert d_star[1].item() == pytest.approx(1.0)
    assert d_star[2].item() == pytest.approx(1.0)
    # the balls leave a gap; the SDF changes sign: nothing can be said
    assert d_star[3].item() == 0.0
    assert d_star[4].item() == 0.0


def test_distance_lower_bound_never_exceeds_true_distance():
    """For a true SDF (a sphere), d* is at most the distance from the segment to the surface."""
    generator = torch.Generator().manual_seed(0)
    starts = torch.rand(2000, 3, generator=generator, dtype=torch.float64) * 4 - 2
    ends = starts + torch.randn(2000, 3, generator=generator, dtype=torch.float64) * 0.4
    radius = 0.7
    fractions = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    segment = starts[:, None] + (ends - starts)[:, None] * fractions[:, None]
    true_distance = (segment.norm(dim=-1) - radius).abs().min(dim=-1).values
    d_star = distance_lower_bound(starts.norm(dim=-1) - radius, ends.norm(dim=-1) - radius, (ends - starts).norm(dim=-1))
    assert (d_star <= true_distance + 1e-6).all()
    assert (d_star > 0).float().mean() > 0.5  # and it is informative, not 0 everywhere


@pytest.mark.parametrize("rays", ANALYTIC_RAYS)
@pytest.mark.parametrize("beta", [0.1, 0.02])
def test_error_integral_bounds_free_energy_error(rays, beta):
    """Theorem 1: |R(t_k) - R^(t_k)| <= E^(t_k) at every sample."""
    sdf_fn, nears, fars = ANALYTIC_RAYS[rays]()
    t_dense, free_energy_dense, _ = dense_opacity(sdf_fn, nears, fars, beta)
    for num_samples in (32, 128, 512):
        t = uniform_samples(nears, fars, num_samples)
        sdf, deltas, d_star = bound_inputs(sdf_fn, t)
        estimate = volsdf_free_energy_estimate(sdf, deltas, beta)
        index = torch.searchsorted(t_dense, t).clamp(max=t_dense.shape[1] - 1)
        exact = free_energy_dense.gather(-1, index)
        assert ((exact - estimate).abs() <= volsdf_error_integral(deltas, d_star, beta) + 1e-6).all()


@pytest.mark.parametrize("rays", ANALYTIC_RAYS)
@pytest.mark.parametrize("beta", [0.1, 0.02])
def test_bound_holds_everywhere_and_decreases_with_samples(rays, beta):
    """Theorem 2: B_{T,beta} >= max_t |O(t) - O^(t)|, t between the samples too; B falls as T is refined."""
    sdf_fn, nears, fars = ANALYTIC_RAYS[rays]()
    t_dense, _, opacity_dense = dense_opacity(sdf_fn, nears, fars, beta)
    previous = None
    for num_samples in (64, 128, 256, 512, 1024):
        t = uniform_samples(nears, fars, num_samples)
        sdf, deltas, d_star = bound_inputs(sdf_fn, t)
        bound = volsdf_opacity_error_bound(sdf, deltas, d_star, beta)
        true_error = (opacity_dense - approximate_opacity(t, sdf, beta, t_dense)).abs().max(dim=-1).values
        assert (true_error <= bound + 1e-6).all()
        if previous is not None:
            assert (bound <= previous + 1e-12).all()
            assert bound.max() < previous.max()
        previous = bound


def test_lemma2_beta_plus_satisfies_bound_for_any_values():
    """Lemma 2's beta+ bounds the error whatever the SDF values (here random, not even an SDF)."""
    generator = torch.Generator().manual_seed(1)
    t = torch.sort(torch.rand(64, 96, generator=generator) * 5, dim=-1).values
    sdf = torch.randn(64, 96, generator=generator) * 0.5
    deltas = t[:, 1:] - t[:, :-1]
    d_star = distance_lower_bound(sdf[:, :-1], sdf[:, 1:], deltas)
    beta_plus = volsdf_beta_plus_init(deltas, EPS)
    assert (volsdf_opacity_error_bound(sdf, deltas, d_star, beta_plus) <= EPS + 1e-6).all()


@pytest.mark.parametrize("rays", ANALYTIC_RAYS)
def test_bisection_returns_the_smallest_beta_found_that_satisfies_the_bound(rays):
    sdf_fn, nears, fars = ANALYTIC_RAYS[rays]()
    t = uniform_samples(nears, fars, 64)
    sdf, deltas, d_star = bound_inputs(sdf_fn, t)
    beta = torch.full_like(nears, 0.005)

    def bound_fn(candidate):
        return volsdf_opacity_error_bound(sdf, deltas, d_star, candidate)

    fails = bound_fn(beta) > EPS  # rays on which this coarse set needs a beta+ > beta
    assert fails.sum() >= 4
    beta_high = volsdf_beta_plus_init(deltas, EPS)
    num_steps = 12
    beta_plus = bisect_beta_plus(bound_fn, beta, beta_high, EPS, num_steps)
    assert (bound_fn(beta_plus) <= EPS).all()
    assert ((beta_plus >= beta) & (beta_plus <= beta_high)).all()
    # the last lower end of the bracket still fails: beta+ is within one bracket width of the boundary
    bracket = (beta_high - beta) / 2**num_steps
    assert (bound_fn(beta_plus - bracket)[fails] > EPS).all()


# -- Algorithm 1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rays", ANALYTIC_RAYS)
@pytest.mark.parametrize("beta", [0.02, 0.005, 0.002])
def test_sampler_converged_rays_have_true_opacity_error_below_eps(rays, beta):
    sdf_fn, nears, fars = ANALYTIC_RAYS[rays]()
    config = ErrorBoundedSamplerConfig()
    result = error_bounded_sampling(nears.float(), fars.float(), lambda t: sdf_fn(t.double()).float(), beta, config)
    assert result.converged.float().mean() >= 0.75
    t_dense, _, opacity_dense = dense_opacity(sdf_fn, nears, fars, beta)
    converged = result.converged
    sdf_refined = sdf_fn(result.t_refined.double())
    approximate = approximate_opacity(result.t_refined[converged], sdf_refined[converged], beta, t_dense[converged])
    true_error = (opacity_dense[converged] - approximate).abs().max(dim=-1).values
    assert (true_error <= EPS).all(), true_error
    # the bound it stopped on was computed on these very samples
    assert (result.bounds[-1][converged] <= EPS).all()


@pytest.mark.parametrize("rays", ANALYTIC_RAYS)
def test_sampler_bound_decreases_over_rounds(rays):
    sdf_fn, nears, fars = ANALYTIC_RAYS[rays]()
    config = ErrorBoundedSamplerConfig(max_iterations=4)
    result = error_bounded_sampling(nears.float(), fars.float(), lambda t: sdf_fn(t.double()).float(), 0.002, config)
    assert len(result.bounds) >= 3
    for before, after in zip(result.bounds[:-1], result.bounds[1:]):
        assert after.max() < before.max()
    # each round added num_samples_per_iteration samples
    for before, after in zip(result.history[:-1], result.history[1:]):
        assert after.shape[1] - before.shape[1] == config.num_samples_per_iteration


def test_sampler_unconverged_rays_use_a_beta_plus_that_satisfies_the_bound():
    sdf_fn, nears, fars = sphere_rays()
    config = ErrorBoundedSamplerConfig(num_initial_samples=32, max_iterations=2, num_samples_per_iteration=16)
    beta = 0.002
    result = error_bounded_sampling(nears.float(), fars.float(), lambda t: sdf_fn(t.double()).float(), beta, config)
    unconverged = ~result.converged
    assert unconverged.any()
    assert (result.beta_plus[unconverged] > beta).all()
    assert torch.allclose(result.beta_plus[~unconverged], torch.full_like(result.beta_plus[~unconverged], beta))
    sdf, deltas, d_star = bound_inputs(lambda t: sdf_fn(t.double()).float(), result.t_refined)
    assert (volsdf_opacity_error_bound(sdf, deltas, d_star, result.beta_plus)[unconverged] <= EPS + 1e-5).all()
    assert (result.iterations[unconverged] == config.max_iterations).all()


def test_final_samples_lie_where_the_opacity_grows():
    """On a plane, the O^-samples (coarse ones left out) fall within a few beta of the crossing at 1.7."""
    sdf_fn, nears, fars = plane_rays()
    beta = 0.01
    config = ErrorBoundedSamplerConfig(num_coarse_kept=0)
    result = error_bounded_sampling(nears.float(), fars.float(), lambda t: sdf_fn(t.double()).float(), beta, config)
    assert result.t_final.shape[1] == config.num_final_samples + 2
    inner = result.t_final[:, 1:-1]  # near and far are always added
    # the crossing lies at t = 1.7 and the density's scale along the ray is beta / cos(theta) <= 0.04
    assert ((inner - 1.7).abs() < 0.25).all()
    assert (torch.diff(result.t_final, dim=-1) >= 0).all()


def test_weights_of_the_approximate_opacity_are_a_distribution():
    sdf_fn, nears, fars = sphere_rays()
    result = error_bounded_sampling(nears.float(), fars.float(), lambda t: sdf_fn(t.double()).float(), 0.01,
                                    ErrorBoundedSamplerConfig())
    sdf = sdf_fn(result.t_refined.double()).float()
    weights = volsdf_opacity_increments(sdf, result.t_refined[:, 1:] - result.t_refined[:, :-1], result.beta_plus)
    assert (weights >= 0).all()
    assert (weights.sum(dim=-1) <= 1.0 + 1e-6).all()
    hits = sdf.min(dim=-1).values < 0
    assert (weights.sum(dim=-1)[hits] > 0.99).all()  # a ray into the solid is stopped by it


# -- the model -------------------------------------------------------------------------------------


def tiny_model(**overrides):
    config = VolSDFModelConfig(**overrides)
    geometry = config.networks.geometry
    geometry.hidden_dim, geometry.num_layers, geometry.skip_layers, geometry.feature_dim = 16, 2, (), 8
    config.networks.radiance.hidden_dim, config.networks.radiance.num_layers = 16, 1
    config.sampler.num_initial_samples, config.sampler.num_samples_per_iteration = 32, 16
    config.sampler.num_final_samples, config.sampler.num_coarse_kept = 16, 8
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=1)


def camera_rays(num_rays: int) -> RayBundle:
    origins = torch.tensor([[0.0, 0.0, 2.5]]).expand(num_rays, 3)
    targets = torch.stack([torch.linspace(-0.9, 0.9, num_rays), torch.zeros(num_rays), torch.zeros(num_rays)], dim=-1)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(num_rays, 1))


def test_ray_sphere_intersections():
    origins = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 5.0], [0.0, 4.0, 5.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -2.0]])
    t_enter, t_exit = ray_sphere_intersections(origins, directions, 3.0)
    assert torch.allclose(t_exit[:, 0], torch.tensor([5.0, 8.0, 2.5]))
    assert torch.allclose(t_enter[:, 0], torch.tensor([-1.0, 2.0, 2.5]))  # behind the camera; a miss: closest approach


def test_model_weights_sum_to_one_with_the_scene_sphere():
    """With the scene sphere as background every ray ends on an opaque surface: weights sum to 1,
    and the rays that miss the object put their weight on the scene sphere at the far end."""
    model = tiny_model()
    model.density.beta_param.data.fill_(0.01 - model.config.beta_min)
    model.level_set = lambda points: points.norm(dim=-1) - 0.6  # an analytic field for the sampler
    ray_bundle = model.collider(camera_rays(16))
    ray_samples = model.sample_along_rays(ray_bundle)
    points = ray_samples.frustums.get_positions()
    alphas = model.get_alphas(ray_samples, {"level": points.norm(dim=-1, keepdim=True) - 0.6})
    weights = ray_samples.get_weights_and_transmittance_from_alphas(alphas, weights_only=True)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=-2), torch.ones(16, 1), atol=1e-5)
    radius = points.norm(dim=-1, keepdim=True)
    on_object = (weights * (radius < 1.0)).sum(dim=(-2, -1))
    # the rays aim at x in [-0.9, 0.9] on the plane z = 0; seen from 2.5, the sphere's outline is at |x| = 0.62
    aim = torch.linspace(-0.9, 0.9, 16).abs()
    assert (on_object[aim < 0.6] > 0.99).all()
    assert (on_object[aim > 0.7] < 0.01).all()


def test_model_outputs_sampler_iterations_and_beta_outside_training():
    model = tiny_model()
    model.eval()
    with torch.no_grad():
        outputs = model.get_outputs(model.collider(camera_rays(8)))
    assert outputs["sampler_iterations"].shape == (8, 1)
    assert ((outputs["sampler_iterations"] >= 1) & (outputs["sampler_iterations"] <= model.config.sampler.max_iterations)).all()
    assert torch.allclose(outputs["beta"], torch.full((8, 1), 0.1))
    assert (outputs["beta_plus"] >= outputs["beta"] - 1e-7).all()


def test_model_training_step_has_finite_gradients():
    model = tiny_model()
    model.train()
    outputs = model.get_outputs(model.collider(camera_rays(32)))
    batch = {"image": torch.rand(32, 3)}
    loss = sum(model.get_loss_dict(outputs, batch).values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.density.beta_param.grad is not None and model.density.beta_param.grad != 0
    # uniform eikonal points fill the scene sphere, not just the object's
    assert outputs["eikonal_points"].norm(dim=-1).max() > 1.5


def test_scene_sphere_inside_object_sphere_is_an_error():
    with pytest.raises(UserInputError, match="scene-sphere-radius"):
        tiny_model(scene_sphere_radius=0.8)


# -- nerfstudio's commands and the plugin's mesh tool on a tiny run ---------------------------------

@pytest.fixture(scope="module")
def tiny_volsdf_run(small_scene, tmp_path_factory):
    """`ns-train volsdf-dtu` for 4 steps with tiny networks; returns the config.yml path."""
    return train_tiny("volsdf-dtu", small_scene.output_dir, tmp_path_factory.mktemp("ns_train_volsdf"), steps=4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ns-render needs an ffmpeg binary on PATH (apt-get install ffmpeg)")
def test_ns_render_writes_volsdf_outputs(tiny_volsdf_run, tmp_path):
    """ns-render loads the run (its exponential learning-rate schedule stores numpy floats in the
    checkpoint) and renders colour, normals and the sampler's rounds per pixel."""
    output = tmp_path / "render"
    result = ns_render_interpolate(tiny_volsdf_run, output, ["rgb", "normal", "sampler_iterations"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(output.glob("*")), "ns-render wrote nothing"


@pytest.mark.slow
def test_neurecon_mesh_extracts_the_volsdf_surface(tiny_volsdf_run, tmp_path):
    import trimesh

    output = tmp_path / "mesh.ply"
    result = run_tool(
        [bin_path("neurecon"), "mesh", "--load-config", str(tiny_volsdf_run), "--output-path", str(output),
         "--resolution", "48", "--space", "unit", "--no-progress"],
        cwd=tiny_volsdf_run.parents[4],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mesh = trimesh.load(output, force="mesh")
    # after 4 steps the surface is still the closed blob of the geometric initialisation, inside the unit sphere
    radii = torch.as_tensor(mesh.vertices).norm(dim=-1)
    assert len(mesh.faces) > 100
    assert 0.2 < float(radii.min()) and float(radii.max()) < 1.0 + 2.0 / 48


# -- convergence of a short CPU training to a known shape -----------------------------------------

SHORT_RUN_STEPS = 500
# Measured on this scene with `training.short_run_settings` (mask loss, no scene sphere, beta from 0.03), seed 0,
# 2 threads: Chamfer 0.061 at level 0 and 0.034 at level beta (beta = 0.041 at the end); with bf16 products 0.055
# and 0.029 (beta 0.039). From the level-0
# surface, the torus scaled by 1.1 is 0.084 away and the torus turned by 30 degrees 0.095; from the level-beta
# surface, the torus scaled by 0.9 is 0.043 away and by 1.1 0.051. With the fused Adam update on an Intel Xeon
# (amx_bf16), fp32, two runs: level beta 0.036 / 0.039 (the second inside a full suite), 0.9x 0.048 / 0.050,
# 1.1x 0.050 / 0.054. Each bound sits half way between the truth's largest reading and the nearest wrong answer
# of any run (level beta: 0.039 and 0.043; the test prints all five distances).
CHAMFER_LEVEL_ZERO = 0.072
CHAMFER_LEVEL_BETA = 0.041


@pytest.fixture(scope="module")
def torus_scene(tmp_path_factory):
    from neurecon_ns.data.synthetic import write_scene

    return write_scene(tmp_path_factory.mktemp("torus_scene"), shape="torus", num_views=32, width=64, height=64)


@pytest.mark.slow
def test_short_training_converges_to_the_torus(torus_scene, tmp_path):
    """A 500-step CPU run (float32: the networks' bf16 products are shared by every method and converge in
    test_convergence's neus-dtu run) recovers the torus, up to the inward offset of about beta that VolSDF's density
    implies while beta is large.

    The Laplace density reaches `exp(-h / beta) / (2 beta)` at a distance `h` outside the surface, so a ray
    passing just outside a tube of radius `r` collects an optical depth of about
    `exp(-h / beta) sqrt(2 pi r beta) / (2 beta)`: at beta = 0.044 and r = 0.17 the silhouette the images
    and masks see lies about 1.3 beta outside the zero level set, and training moves the zero level set
    inward by that much (the learnt SDF is +0.046 on the true surface on average). The level-0 surface is
    therefore checked with a threshold that admits that offset and still rejects a 10% larger or a turned
    torus; the level-beta surface, where the density puts the surface, must match the exact torus more
    closely than a 10% smaller or larger one.
    """
    import numpy as np

    from neurecon_ns.data import shapes
    from neurecon_ns.mesh.evaluate import compare_meshes
    from neurecon_ns.mesh.extract import extract_level_set
    from neurecon_ns.training import train_short

    run = train_short("volsdf-dtu", torus_scene.output_dir, tmp_path / "outputs", SHORT_RUN_STEPS, overrides={"networks.precision": "fp32"})
    model = run.trainer.pipeline.model
    torus = shapes.get_shape("torus")
    turn = shapes.rotation_about_axis((1.0, 0.0, 0.0), np.deg2rad(30.0))
    turned = shapes.Shape("turned", lambda p: torus.sdf_fn(p @ turn), torus.bounding_radius)

    def chamfer(mesh, shape):
        return compare_meshes(mesh, shapes.surface_mesh(shape, resolution=160), num_points=30_000).chamfer

    to_larger, to_turned = chamfer(run.mesh_unit, shapes.scaled(torus, 1.1)), chamfer(run.mesh_unit, turned)
    print(f"measured: volsdf-dtu (fp32) torus Chamfer {run.report.chamfer:.4f} (level 0); 1.1x {to_larger:.4f}, turned {to_turned:.4f}")
    assert run.report.chamfer < CHAMFER_LEVEL_ZERO, run.report
    assert to_larger > CHAMFER_LEVEL_ZERO and to_turned > CHAMFER_LEVEL_ZERO

    beta = float(model.density.beta())
    model.eval()
    with torch.no_grad():
        density_surface = extract_level_set(model.level_set, [-1.02] * 3, [1.02] * 3, 128, level=beta)
    to_truth = chamfer(density_surface, torus)
    to_smaller, to_larger = (chamfer(density_surface, shapes.scaled(torus, factor)) for factor in (0.9, 1.1))
    print(f"measured: volsdf-dtu (fp32) torus Chamfer {to_truth:.4f} (level beta, beta {beta:.4f}); 0.9x {to_smaller:.4f}, 1.1x {to_larger:.4f}")
    assert to_truth < CHAMFER_LEVEL_BETA
    assert to_smaller > CHAMFER_LEVEL_BETA and to_larger > CHAMFER_LEVEL_BETA


def test_scene_sphere_with_a_background_network_is_one_sentence():
    from neurecon_ns.errors import UserInputError
    from neurecon_ns.models.volsdf import VolSDFModelConfig

    config = VolSDFModelConfig(background_model="nerfpp", scene_sphere_background=True)
    with pytest.raises(UserInputError, match="scene-sphere-background False"):
        config.setup(scene_box=None, num_train_data=1)
