"""Central differences and the curvature loss: the Laplacian of analytic level sets, the numerical gradient against
the closed form, the step that follows the hash grid's finest active level, the weight's schedule, and training
with the loss on."""

import math

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from neurecon_ns.fields.central_differences import (
    gradient_from_neighbours,
    laplacian_from_neighbours,
    neighbour_offsets,
)
from neurecon_ns.fields.hash_encoding import HashGridConfig
from neurecon_ns.fields.level_set_network import LevelSetNetwork
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, SurfaceFieldConfig
from neurecon_ns.models.surface_model import curvature_loss_weight_at, mean_absolute_laplacian
from neurecon_ns.training import method_config, run_iteration, setup_trainer, small_cpu_config
from neurecon_ns.utils.accelerator import as_on_a_gpu
from neurecon_ns.utils.cuda_rules import CudaAutocastRules, HostSyncCounter


class AnalyticLevelSet(LevelSetNetwork):
    """A geometry network stand-in whose level value is a given function, with 2 constant features."""

    feature_dim = 2

    def __init__(self, function, step: float) -> None:
        super().__init__()
        self.function = function
        self.step = step

    def forward(self, points):
        level_value = self.function(points)[..., None]
        return torch.cat([level_value, torch.zeros(*points.shape[:-1], 2, dtype=points.dtype)], dim=-1)

    def central_difference_step(self):
        return self.step


def sphere(radius):
    return lambda points: points.norm(dim=-1) - radius


def plane(points):
    normal = torch.tensor([1.0, -2.0, 0.5], dtype=points.dtype) / math.sqrt(5.25)
    return points @ normal - 0.1


def quadric(points):
    """`x^2 + 2 y^2 + 3 z^2 - 0.2`: gradient `(2x, 4y, 6z)` and Laplacian 12 everywhere (central differences are
    exact on a quadric)."""
    return (points**2 * torch.tensor([1.0, 2.0, 3.0], dtype=points.dtype)).sum(dim=-1) - 0.2


def field_on(function, gradient: str, step: float = 1e-3):
    field = SurfaceFieldConfig(
        geometry=GeometryNetworkConfig(num_layers=1, hidden_dim=8, skip_layers=(), feature_dim=2), gradient=gradient
    ).setup()
    field.geometry_network = AnalyticLevelSet(function, step)
    return field


def laplacian_of(function, points, step):
    neighbour_values = function(points[:, None, :] + neighbour_offsets(step, points))
    return laplacian_from_neighbours(function(points)[:, None], neighbour_values, step)


def random_directions(count, dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(count, 3, dtype=dtype), dim=-1)


def test_laplacian_of_a_sphere_sdf_is_two_over_the_distance_to_its_centre():
    # the Laplacian of |x| - r is 2 / |x|: 2 / r on the surface
    distances = torch.linspace(0.3, 0.9, 7, dtype=torch.float64).repeat_interleave(20)[:, None]
    points = random_directions(140) * distances
    laplacian = laplacian_of(sphere(0.5), points, step=1e-3)
    assert torch.allclose(laplacian, 2.0 / distances, rtol=1e-4)
    on_surface = random_directions(50) * 0.5
    assert torch.allclose(laplacian_of(sphere(0.5), on_surface, step=1e-3), torch.full((50, 1), 4.0, dtype=torch.float64), rtol=1e-4)


def test_laplacian_of_a_plane_is_zero_and_of_a_quadric_its_constant():
    points = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    assert laplacian_of(plane, points, step=1e-2).abs().max() < 1e-9
    assert torch.allclose(laplacian_of(quadric, points, step=1e-2), torch.full((200, 1), 12.0, dtype=torch.float64))
    neighbour_values = quadric(points[:, None, :] + neighbour_offsets(1e-2, points))
    exact_gradient = points * torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    assert torch.allclose(gradient_from_neighbours(neighbour_values, 1e-2), exact_gradient)


@pytest.mark.parametrize("gradient", ["numerical", "analytic"])
def test_the_field_gives_the_closed_form_gradient_and_laplacian_of_an_analytic_sdf(gradient):
    """Through `SurfaceField`: the sphere's gradient `x / |x|` and Laplacian `2 / |x|`, in float32 at the step the
    cell of a 256-cell level takes (2/256; the float32 error grows as 1/h^2); the analytic path's gradient is the network's autograd one."""
    points = (random_directions(300) * torch.linspace(0.35, 0.8, 300, dtype=torch.float64)[:, None]).float()
    field = field_on(sphere(0.5), gradient, step=2.0 / 256)
    level_value, features, normals, laplacian = field.get_level_value_gradient_and_laplacian(points)
    distance = points.norm(dim=-1, keepdim=True)
    assert torch.allclose(level_value, distance - 0.5, atol=1e-6) and features.shape == (300, 2)
    assert (normals - points / distance).norm(dim=-1).max() < 1e-3
    assert torch.allclose(laplacian, 2.0 / distance, rtol=2e-2)
    _, _, same_normals = field.get_level_value_and_gradient(points)
    assert torch.equal(same_normals, normals)


def test_the_laplacian_beside_bf16_products_is_the_float32_one():
    """With the analytic gradient the Laplacian takes seven level queries of its own, all in float32: the rendering
    pass's bf16 level value (about 1e-3 off) divided by `h^2` would swamp it."""
    geometry = GeometryNetworkConfig(num_layers=3, hidden_dim=64, skip_layers=(2,), feature_dim=16, num_frequencies=4)
    fields = {precision: SurfaceFieldConfig(geometry=geometry, precision=precision).setup() for precision in ("fp32", "bf16")}
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in fields["fp32"].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # away from the smooth geometric initialisation
    fields["bf16"].load_state_dict(fields["fp32"].state_dict())
    points = random_directions(256, torch.float32) * 0.5
    laplacians = {}
    for precision, field in fields.items():
        field.train()
        laplacians[precision] = field.get_level_value_gradient_and_laplacian(points)[3].detach()
    reference = laplacians["fp32"]
    assert (laplacians["bf16"] - reference).abs().max() <= 1e-3 * reference.abs().max()


def test_a_bumpy_surface_has_a_larger_mean_absolute_laplacian_than_a_flat_one():
    points = torch.rand(2000, 3, dtype=torch.float64) * 2 - 1
    inside = torch.ones(2000, dtype=torch.float64)
    flat = mean_absolute_laplacian(laplacian_of(plane, points, 1e-2), inside)

    def bumpy(points):
        return plane(points) + 0.01 * torch.sin(40 * points[..., 0]) * torch.sin(40 * points[..., 1])

    assert flat < 1e-8 and mean_absolute_laplacian(laplacian_of(bumpy, points, 1e-2), inside) > 5.0
    outside_only = torch.zeros(2000, dtype=torch.float64)
    assert mean_absolute_laplacian(laplacian_of(bumpy, points, 1e-2), outside_only) == 0.0


def hash_field(gradient="numerical", initial_levels=2, steps_per_level=10, init_scale=None):
    grid = HashGridConfig(num_levels=6, min_resolution=8, max_resolution=128, log2_hashmap_size=14,
                          initial_levels=initial_levels, steps_per_level=steps_per_level, implementation="torch")
    geometry = GeometryNetworkConfig(encoding="hash", hash_grid=grid, num_layers=2, hidden_dim=32, skip_layers=(),
                                     feature_dim=8, use_weight_norm=False)
    return SurfaceFieldConfig(geometry=geometry, gradient=gradient).setup()


def test_the_step_follows_the_finest_active_level_as_levels_switch_on():
    field = hash_field()
    encoding = field.geometry_network.encoding
    queried = []
    field.geometry_network.register_forward_hook(lambda module, inputs, output: queried.append(inputs[0].detach()))
    points = torch.rand(16, 3) - 0.5
    steps = []
    for step, active in [(0, 2), (9, 2), (10, 3), (25, 4), (45, 6), (1000, 6)]:
        field.update_to_step(step)
        cell = 2.0 / encoding.level_resolution(active - 1)
        assert float(field.numerical_gradient_step()) == pytest.approx(cell)
        queried.clear()
        field.get_level_value_gradient_and_laplacian(points)
        (evaluated,) = queried
        offsets = evaluated[:, 1:] - evaluated[:, :1]  # the six neighbours against the point itself
        assert torch.allclose(offsets.abs().amax(dim=(0, 2)), torch.full((6,), cell), rtol=1e-4)
        steps.append(cell)
    assert steps == sorted(steps, reverse=True) and steps[0] > 5 * steps[-1], "coarse to fine: the step shrinks"


def test_curvature_weight_warms_up_then_shrinks_with_the_step():
    weight = 5e-3
    assert curvature_loss_weight_at(0, weight, 100, 0.1, 0.1, True) == 0.0
    assert curvature_loss_weight_at(50, weight, 100, 0.1, 0.1, True) == pytest.approx(weight / 2)
    assert curvature_loss_weight_at(100, weight, 100, 0.1, 0.1, True) == pytest.approx(weight)
    assert curvature_loss_weight_at(400, weight, 100, 0.025, 0.1, True) == pytest.approx(weight / 4)
    assert curvature_loss_weight_at(400, weight, 100, 0.025, 0.1, False) == pytest.approx(weight)
    assert curvature_loss_weight_at(7, weight, 0, 0.1, 0.1, True) == pytest.approx(weight)
    on_device = curvature_loss_weight_at(400, weight, 100, torch.tensor(0.05), 0.1, True)
    assert isinstance(on_device, torch.Tensor) and float(on_device) == pytest.approx(weight / 2)


def test_curvature_loss_smooths_a_noisy_field():
    """Minimising the mean |Laplacian| alone over a grid started with large random features takes most of it away."""
    torch.manual_seed(0)
    field = hash_field(steps_per_level=0)
    with torch.no_grad():
        field.geometry_network.encoding.grids.table.uniform_(-1.0, 1.0)
        field.geometry_network.layers[0].weight.normal_(0.0, 0.5)
    field.train()
    optimizer = torch.optim.Adam(field.parameters(), lr=1e-2)
    points = torch.rand(1024, 3) * 1.6 - 0.8
    inside = torch.ones(1024)
    losses = []
    for _ in range(40):
        _, _, _, laplacian = field.get_level_value_gradient_and_laplacian(points)
        loss = mean_absolute_laplacian(laplacian, inside)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize(
    "gradient, curvature_points, curvature_num_rays, points_read",
    [
        ("numerical", "ray_samples", 16, "all samples"),
        ("analytic", "ray_samples", 16, "16 rays' samples"),
        ("analytic", "ray_samples", 0, "all samples"),
        ("analytic", "surface", 0, "2 per ray"),
        ("numerical", "surface", 0, "2 per ray"),
    ],
)
def test_training_with_the_curvature_loss_gives_a_finite_loss_that_follows_its_schedule(
    gradient, curvature_points, curvature_num_rays, points_read, small_scene, tmp_path
):
    """A few steps of neus-fast's CPU size with the loss on: the grid trains, the loss is finite and weighted as
    scheduled, and the loss reads the points its settings name: `curvature_num_rays` rays' samples with the analytic
    gradient (numerical gradients read all, for free), or each ray's two samples of highest rendering weight."""
    config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path, 40, rays_per_batch=64)
    model_config = config.pipeline.model
    model_config.networks.gradient = gradient
    model_config.curvature_points = curvature_points
    model_config.curvature_num_rays = curvature_num_rays
    model_config.curvature_loss_weight = 1e-2
    model_config.curvature_warmup_steps = 4
    grid = model_config.networks.geometry.hash_grid
    grid.steps_per_level = 2
    torch.manual_seed(0)
    trainer = setup_trainer(config)
    model = trainer.pipeline.model
    encoding = model.field.geometry_network.encoding
    initial_cell = 2.0 / encoding.level_resolution(grid.initial_levels - 1)
    assert model.initial_difference_step == pytest.approx(initial_cell)
    table_before = encoding.grids.table.detach().clone()
    for step in range(6):
        run_iteration(trainer, step)
    assert not torch.equal(table_before, encoding.grids.table.detach())
    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(6, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    ray_bundle, batch = trainer.pipeline.datamanager.next_train(6)
    outputs = model(ray_bundle)
    num_samples = outputs["eikonal_points"].shape[0]
    expected_points = {"all samples": num_samples, "16 rays' samples": 16 * num_samples // 64, "2 per ray": 2 * 64}
    assert outputs["laplacians"].shape == (expected_points[points_read], 1)
    assert outputs["curvature_points"].shape == (expected_points[points_read], 3)
    if curvature_points == "surface":
        # each ray's chosen samples are its two heaviest, and they count with their rendering weights
        weights = outputs["weights"].detach()[..., 0]
        heaviest = weights.topk(2, dim=-1).values.reshape(-1)
        assert torch.allclose(outputs["curvature_weights"], heaviest)
        points = outputs["eikonal_points"].reshape(64, -1, 3)
        first_ray_heaviest = points[0, weights[0].argmax()]
        assert torch.allclose(outputs["curvature_points"][0], first_ray_heaviest)
        expected_laplacian = model.field.get_laplacian(outputs["curvature_points"][:4].detach(), create_graph=True).detach()
        # equal up to the float32 rounding of the seven level values (about 1e-6 after the grid's and the network's
        # sums) divided by h^2: the numerical gradient's pass gets them in another batch than this query
        step = float(model.field.numerical_gradient_step())
        assert torch.allclose(outputs["laplacians"][:4].detach(), expected_laplacian, rtol=1e-3, atol=max(1e-2, 2e-6 / step**2))
    else:
        assert torch.all(outputs["curvature_weights"] == 1.0)
    metrics = model.get_metrics_dict(outputs, batch)
    loss_dict = model.get_loss_dict(outputs, batch, metrics)
    curvature = loss_dict["curvature_loss"]
    assert torch.isfinite(curvature) and curvature > 0
    # step 6: warmed up, 4 + 6 // 2 = 7 levels active
    expected_weight = 1e-2 * (2.0 / encoding.level_resolution(6)) / initial_cell
    assert float(model.curvature_loss_weight()) == pytest.approx(expected_weight, rel=1e-5)
    assert float(curvature) == pytest.approx(expected_weight * float(metrics["mean_abs_laplacian"]), rel=1e-5)
    curvature.backward()
    assert encoding.grids.table.grad is not None and encoding.grids.table.grad.abs().sum() > 0


def test_curvature_loss_is_off_by_default_and_costs_nothing(small_scene, tmp_path):
    config = small_cpu_config(method_config("neus-dtu"), small_scene.output_dir, tmp_path, 10, rays_per_batch=32)
    assert config.pipeline.model.curvature_loss_weight == 0.0
    trainer = setup_trainer(config)
    ray_bundle, batch = trainer.pipeline.datamanager.next_train(0)
    outputs = trainer.pipeline.model(ray_bundle)
    assert "laplacians" not in outputs
    assert "curvature_loss" not in trainer.pipeline.model.get_loss_dict(outputs, batch)


@pytest.mark.parametrize("gradient", ["numerical", "analytic"])
def test_curvature_loss_under_half_precision_takes_no_host_sync(gradient, small_scene, tmp_path):
    """A training step's model work with the curvature loss on, under CUDA's half-precision rules on the GPU path:
    a finite float32 loss, finite parameter gradients, and no host sync (the schedule's step `h` stays a tensor on
    the device; the grid smoothness term slices the table by Python ints)."""
    config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path, 40, rays_per_batch=32)
    model_config = config.pipeline.model
    model_config.networks.gradient = gradient
    model_config.curvature_loss_weight, model_config.curvature_num_rays = 1e-2, 8
    grid = model_config.networks.geometry.hash_grid
    grid.num_levels, grid.max_resolution, grid.log2_hashmap_size = 4, 64, 13  # the 16-cell level dense
    assert model_config.grid_smoothness_loss_weight > 0, "the CPU size's grid smoothness term is in the step too"
    torch.manual_seed(0)
    trainer = setup_trainer(config)
    model = trainer.pipeline.model
    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(30, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    ray_bundle, batch = trainer.pipeline.datamanager.next_train(30)
    with as_on_a_gpu(), HostSyncCounter() as counter, torch.autocast("cpu", dtype=torch.float16), CudaAutocastRules():
        outputs = model(ray_bundle)
        loss_dict = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
        loss = sum(loss_dict.values())
    with as_on_a_gpu(), HostSyncCounter() as backward_counter:
        loss.backward()
    counter.counts.update(backward_counter.counts)
    assert counter.total == 0, dict(counter.counts)
    curvature = loss_dict["curvature_loss"]
    assert curvature.dtype == torch.float32 and torch.isfinite(curvature) and curvature > 0
    assert outputs["laplacians"].dtype == torch.float32
    assert loss_dict["grid_smoothness_loss"].dtype == torch.float32 and loss_dict["grid_smoothness_loss"] > 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def test_curvature_loss_stops_at_its_end_step(small_scene, tmp_path):
    """Before `curvature_end_step` the CPU size's loss reads its Laplacians; from it on, neither the Laplacians nor
    the loss are computed."""
    config = small_cpu_config(method_config("neus-fast"), small_scene.output_dir, tmp_path, 10, rays_per_batch=32)
    config.pipeline.model.curvature_end_step = 5
    trainer = setup_trainer(config)
    model = trainer.pipeline.model
    trainer.pipeline.train()
    for step, expected in ((4, True), (5, False), (9, False)):
        model.update_to_step(step)
        ray_bundle, batch = trainer.pipeline.datamanager.next_train(step)
        outputs = model(ray_bundle)
        assert ("laplacians" in outputs) == expected, step
        assert ("curvature_loss" in model.get_loss_dict(outputs, batch)) == expected, step
