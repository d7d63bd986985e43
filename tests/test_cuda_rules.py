"""The GPU path, held to CUDA's rules on a CPU: half-precision autocast as CUDA applies it, a gradient scaler,
the grid backends' checkpoints, the compile fallback, and the host syncs of a training step.

Every registered method takes training steps and renders a view under `torch.autocast("cpu", float16)` with
`CudaAutocastRules` (CUDA's refusals and float32 list on top of CPU autocast) and a gradient scaler, as
nerfstudio's trainer runs `--mixed-precision` on a GPU.
"""

from pathlib import Path

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from torch.utils._python_dispatch import TorchDispatchMode

from neurecon_ns.errors import UserInputError
from neurecon_ns.fields.hash_encoding import HashGridConfig, ProgressiveHashEncoding
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, RadianceNetworkConfig, SurfaceFieldConfig
from neurecon_ns.fields.softplus_mlp import SoftplusMLPWithGradient
from neurecon_ns.model_components.root_finding import find_first_root, sphere_trace
from neurecon_ns.models.surface_model import mask_cross_entropy
from neurecon_ns.training import method_config, setup_trainer, small_cpu_config
from neurecon_ns.utils.accelerator import as_on_a_gpu
from neurecon_ns.utils.cuda_rules import CudaAutocastRules, HostSyncCounter

METHODS = ["neus-dtu", "volsdf-dtu", "unisurf-dtu", "neus-nerfpp", "volsdf-nerfpp", "neus-fast"]

SYNC_BUDGET = {method: 0 for method in METHODS}
"""Host syncs allowed in a training step's model work on the GPU path (outputs, losses, metrics and backward;
nerfstudio's data manager and optimisers are not counted): none. The syncs outside the step are the
occupancy grid's refresh every `occupancy_grid_update_every` steps (NeuS reads its sharpness once there)."""


def half_precision():
    """What nerfstudio's trainer does under `--mixed-precision` on a GPU, emulated on a CPU."""
    return torch.autocast("cpu", dtype=torch.float16), CudaAutocastRules()


def tiny_trainer(method: str, scene: Path, output_dir: Path):
    """The method at a size that takes a step in a second: its own sampler kinds, gradients and losses (neus-fast
    with its GPU setting, central differences), tiny networks, and the networks' products following autocast (what
    `networks.precision: auto` chooses on a GPU)."""
    config = small_cpu_config(method_config(method), scene, output_dir, 100, hidden_dim=32, num_layers=2, rays_per_batch=64)
    model = config.pipeline.model
    model.networks.precision = "autocast"  # the closed-form node's products in half precision, as on a GPU
    if method == "neus-fast":
        model.networks.gradient = "numerical"
        grid = model.networks.geometry.hash_grid
        grid.num_levels, grid.max_resolution, grid.log2_hashmap_size = 4, 64, 13  # the 16-cell level dense (quadratic)
    model.num_eikonal_uniform_points = min(model.num_eikonal_uniform_points, 64)
    model.background_network.hidden_dim, model.background_network.num_layers = 32, 2
    model.background_network.skip_layers = ()
    model.num_background_samples = 8
    return setup_trainer(config)


def train_step_with_scaler(trainer, step: int, scaler) -> dict:
    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    trainer.optimizers.zero_grad_all()
    autocast, rules = half_precision()
    with autocast, rules:
        _, loss_dict, _ = trainer.pipeline.get_train_loss_dict(step=step)
        loss = sum(loss_dict.values())
    scaler.scale(loss).backward()
    trainer.optimizers.optimizer_scaler_step_all(scaler)
    scaler.update()
    trainer.optimizers.scheduler_step_all(step)
    return loss_dict


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_renders_under_cuda_half_precision_without_host_syncs(method, small_scene, tmp_path):
    torch.manual_seed(0)
    trainer = tiny_trainer(method, small_scene.output_dir, tmp_path)
    model = trainer.pipeline.model
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    # three steps: the first has a learning rate of 0 (warm-up), and a hash grid's features start switched off
    # by the geometric initialisation, so the grid's table moves only once the first layer has
    for step in range(3):
        loss_dict = train_step_with_scaler(trainer, step, scaler)
        for name, value in loss_dict.items():
            assert value.dtype == torch.float32 and torch.isfinite(value), (name, value)
        for name, parameter in model.named_parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    assert scaler.get_scale() == 2.0**10, "a step was skipped: a gradient was not finite"
    field_parameters = [name for name in before if name.startswith("field.")]
    moved = [name for name in field_parameters if not torch.equal(before[name], model.state_dict()[name])]
    assert len(moved) == len(field_parameters), set(field_parameters) - set(moved)

    # the level value and its gradient, which the mappings and the eikonal term read, are float32
    points = torch.rand(64, 3) - 0.5
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    autocast, rules = half_precision()
    with autocast, rules:
        field_outputs = model.field(points, directions)
    assert field_outputs["level"].dtype == field_outputs["gradient"].dtype == torch.float32

    # the host syncs of a training step's model work, on the GPU path (the schedules and the occupancy grid
    # were set by the callbacks of the steps above)
    ray_bundle, batch = trainer.pipeline.datamanager.next_train(3)
    with as_on_a_gpu(), HostSyncCounter() as counter, autocast, rules:
        outputs = model(ray_bundle)
        metrics = model.get_metrics_dict(outputs, batch)
        loss = sum(model.get_loss_dict(outputs, batch, metrics).values())
    with as_on_a_gpu(), HostSyncCounter() as backward_counter:
        loss.backward()
    counter.counts.update(backward_counter.counts)
    assert counter.total <= SYNC_BUDGET[method], dict(counter.counts)

    model.eval()
    camera = trainer.pipeline.datamanager.train_dataset.cameras[0:1]
    camera.rescale_output_resolution(0.25)
    with autocast, rules:
        outputs = model.get_outputs_for_camera(camera)
    for name in ("rgb", "accumulation", "depth", "normal"):
        assert outputs[name].shape[:2] == (10, 12) and torch.isfinite(outputs[name]).all(), name


def test_the_counter_sees_each_kind_of_host_sync():
    values, mask = torch.rand(10), torch.rand(10) > 0.5
    with HostSyncCounter() as counter:
        float(values.sum())
        values[mask]
        values[mask] = 0.0
        mask.nonzero()
    assert counter.counts == {"read a value": 1, "boolean-mask indexing": 2, "nonzero": 1}
    with HostSyncCounter() as counter:
        torch.eye(3).to(torch.empty(0, device="meta"))
    assert counter.counts == {"host-to-device copy": 1}


def test_the_rules_refuse_what_cuda_autocast_refuses_and_run_its_float32_list_in_float32():
    probability, target = torch.rand(8), (torch.rand(8) > 0.5).float()
    autocast, rules = half_precision()
    with autocast, rules:
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            torch.nn.functional.binary_cross_entropy(probability, target)
        half = torch.nn.functional.linear(torch.rand(4, 3), torch.rand(5, 3))
        assert half.dtype == torch.float16
        assert torch.nn.functional.softplus(half).dtype == torch.float32 and torch.exp(half).dtype == torch.float32
        # the mask loss turns autocast off around it, as CUDA asks
        loss = mask_cross_entropy(probability[:, None].half(), target[:, None])
    expected = torch.nn.functional.binary_cross_entropy(probability.clamp(1e-3, 1 - 1e-3), target)
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected, atol=1e-3)


def test_radiance_network_runs_under_half_precision():
    network = RadianceNetworkConfig(num_layers=2, hidden_dim=32).setup(feature_dim=16)
    inputs = [torch.rand(2, 7, dim, requires_grad=True) for dim in (3, 3, 3, 16)]
    expected = network(*inputs)
    autocast, rules = half_precision()
    with autocast, rules:
        colour = network(*inputs)
    assert colour.shape == (2, 7, 3) and torch.allclose(colour.float(), expected, atol=1e-2)
    colour.float().sum().backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in network.parameters())


class TorchBefore24:
    """torch as seen by a module, with autocast's query as torch < 2.4 has it: `is_autocast_enabled()` takes no
    argument and means CUDA."""

    @staticmethod
    def is_autocast_enabled():
        return torch.is_autocast_enabled("cuda")

    def __getattr__(self, name):
        return getattr(torch, name)


def test_autocast_state_is_read_on_a_torch_without_the_device_argument(monkeypatch):
    import neurecon_ns.utils.accelerator as accelerator

    network = GeometryNetworkConfig(num_layers=2, hidden_dim=16, skip_layers=()).setup()
    points = torch.rand(10, 3)
    expected = network.level_value(points)
    with pytest.raises(TypeError):
        TorchBefore24().is_autocast_enabled("cpu")
    monkeypatch.setattr(accelerator, "torch", TorchBefore24())
    assert not accelerator.autocast_enabled("cpu")
    with torch.no_grad():
        assert torch.allclose(network.level_value(points), expected)
        with torch.autocast("cpu", dtype=torch.float16):
            assert accelerator.autocast_enabled("cpu") and not accelerator.autocast_enabled("cuda")
            level_value = network.level_value(points)
    assert level_value.dtype == torch.float32 and torch.allclose(level_value, expected, atol=1e-2)


def sphere_network(num_levels: int = 8) -> SurfaceFieldConfig:
    """neus-fast's field at its geometric initialisation (close to the SDF of a sphere of radius 0.5), every level
    active."""
    grid = HashGridConfig(num_levels=num_levels, max_resolution=1024, log2_hashmap_size=14, implementation="torch")
    geometry = GeometryNetworkConfig(encoding="hash", hash_grid=grid, num_layers=2, hidden_dim=64, skip_layers=(),
                                     feature_dim=15, use_weight_norm=False)
    field = SurfaceFieldConfig(geometry=geometry, gradient="numerical").setup()
    field.update_to_step(10**6)
    return field


def test_numerical_gradient_in_half_precision_is_the_float32_one():
    """Central differences divide level values by 2h, h = the finest cell (2/1024 here): in float16 the rounding
    of the values would be most of the result; the field takes them in float32 under autocast."""
    torch.manual_seed(0)
    field = sphere_network()
    assert float(field.numerical_gradient_step()) == pytest.approx(2.0 / 1024)
    points = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1) * 0.5
    _, _, expected = field.get_level_value_and_gradient(points)
    _, _, exact = field.geometry_network.value_features_and_gradient(points, create_graph=False)
    assert ((expected - exact).norm(dim=-1) / exact.norm(dim=-1)).max() < 1e-3  # float32 differences: the gradient
    autocast, rules = half_precision()
    with autocast, rules:
        level, features, gradient = field.get_level_value_and_gradient(points)
    assert level.dtype == gradient.dtype == torch.float32
    relative_error = (gradient - expected).norm(dim=-1) / expected.norm(dim=-1)
    assert relative_error.median() < 1e-4 and relative_error.max() < 1e-3, (relative_error.median(), relative_error.max())


def test_the_central_difference_step_stays_on_the_device():
    """On the "meta" device (shapes only) a host read of the active level, or a CPU tensor moved to the points'
    device, shows up: the numerical gradient has neither."""
    field = sphere_network(num_levels=4).to("meta")
    points = torch.empty(16, 3, device="meta")
    with HostSyncCounter() as counter:
        _, _, gradient = field.get_level_value_and_gradient(points)
    assert gradient.shape == (16, 3) and counter.total == 0, dict(counter.counts)


def test_closed_form_node_computes_in_float32_under_any_autocast():
    """`SoftplusMLPWithGradient` casts and turns autocast off itself (as `custom_fwd`/`custom_bwd` would), so a
    caller under autocast, with half-precision inputs, gets the float32 result and gradients when its products
    are asked for in float32."""
    torch.manual_seed(0)
    network = GeometryNetworkConfig(num_layers=3, hidden_dim=64, skip_layers=(2,)).setup()
    encoded = network.encoding(torch.rand(50, 3) * 2 - 1).half().float()  # values a half-precision input can hold
    parameters = network._weights_and_biases()
    arguments = (network.config.softplus_beta, tuple(network.config.skip_layers), 1.0, torch.float32)
    expected = SoftplusMLPWithGradient.apply(encoded, *arguments, *parameters)
    expected_grads = torch.autograd.grad(sum(output.sum() for output in expected), parameters)
    with torch.autocast("cpu", dtype=torch.float16):
        outputs = SoftplusMLPWithGradient.apply(encoded.half(), *arguments, *parameters)
        grads = torch.autograd.grad(sum(output.sum() for output in outputs), parameters)
    for output, reference in zip(outputs, expected):
        assert output.dtype == torch.float32 and torch.allclose(output, reference, atol=2e-3)
    for grad, reference in zip(grads, expected_grads):
        assert grad.dtype == torch.float32 and torch.allclose(grad, reference, rtol=1e-2, atol=1e-2)


class FakeTinyCudaGrid(torch.nn.Module):
    """Stands in for nerfstudio's `HashEncoding` built on tiny-cuda-nn: its parameters under the same key."""

    def __init__(self, **_) -> None:
        super().__init__()
        self.tcnn_encoding = torch.nn.Module()
        self.tcnn_encoding.params = torch.nn.Parameter(torch.zeros(100))


def test_a_checkpoint_of_the_other_grid_backend_is_refused_in_one_sentence(monkeypatch):
    import nerfstudio.field_components.encodings as encodings

    config = HashGridConfig(num_levels=2, max_resolution=32, log2_hashmap_size=10, implementation="torch")
    torch_grid = ProgressiveHashEncoding(config)
    torch_state = torch_grid.state_dict()
    monkeypatch.setattr(encodings, "TCNN_EXISTS", True)
    monkeypatch.setattr(encodings, "HashEncoding", FakeTinyCudaGrid)
    tcnn_grid = ProgressiveHashEncoding(HashGridConfig(**{**config.__dict__, "implementation": "tcnn"}))
    assert tcnn_grid.backend == "tcnn" and torch_grid.backend == "torch"
    # nerfstudio's loader retries with strict=False: that must not load an untrained grid silently either
    for strict in (True, False):
        with pytest.raises(UserInputError, match="trained with the torch grid .*implementation: torch"):
            tcnn_grid.load_state_dict(torch_state, strict=strict)
        with pytest.raises(UserInputError, match="trained with tiny-cuda-nn .*install tiny-cuda-nn"):
            torch_grid.load_state_dict(tcnn_grid.state_dict(), strict=strict)
    torch_grid.load_state_dict(torch_state)  # its own backend loads


def sphere_level(points):
    return points.norm(dim=-1) - 0.5


def rays_at_the_sphere(num_rays: int = 64):
    torch.manual_seed(0)
    origins = torch.tensor([0.0, 0.0, -2.0]).expand(num_rays, 3).clone()
    targets = torch.rand(num_rays, 3) * 1.2 - 0.6  # some miss the sphere
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    return origins, directions, torch.full((num_rays, 1), 0.5), torch.full((num_rays, 1), 3.5)


def test_surface_searches_take_fixed_shapes_on_the_gpu_path_and_find_the_same_surface():
    origins, directions, t_near, t_far = rays_at_the_sphere()
    half_level = lambda points: sphere_level(points).half()  # noqa: E731 (a level function under autocast)
    t_cpu, hit_cpu = find_first_root(half_level, origins, directions, t_near, t_far, 64, 8)
    with as_on_a_gpu(), HostSyncCounter() as counter:
        t_gpu, hit_gpu = find_first_root(half_level, origins, directions, t_near, t_far, 64, 8)
    assert counter.total == 0, dict(counter.counts)
    assert 0 < hit_cpu.sum() < len(hit_cpu) and torch.equal(hit_cpu, hit_gpu)
    assert t_cpu.dtype == torch.float32 and torch.allclose(t_cpu, t_gpu)

    t_cpu, converged_cpu = sphere_trace(sphere_level, origins, directions, t_near, t_far, 32, 1e-5)
    with as_on_a_gpu(), HostSyncCounter() as counter:
        t_gpu, converged_gpu = sphere_trace(sphere_level, origins, directions, t_near, t_far, 32, 1e-5)
    assert counter.total == 0, dict(counter.counts)
    assert torch.equal(converged_cpu, converged_gpu) and converged_cpu.any()
    assert torch.allclose(t_cpu[converged_cpu], t_gpu[converged_gpu])


def test_the_compile_fallback_covers_the_backward_and_leaves_out_of_memory_alone(capsys):
    torch.manual_seed(0)
    config = SurfaceFieldConfig(compile=True)
    config.geometry.num_layers, config.geometry.hidden_dim, config.geometry.skip_layers = 2, 16, ()
    config.radiance.num_layers, config.radiance.hidden_dim = 1, 16
    field = config.setup().train()

    class BackwardFails(torch.autograd.Function):
        """What a pass whose forward compiled but whose backward Inductor cannot compile does."""

        @staticmethod
        def forward(ctx, tensor):
            return tensor.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward compilation failed: no C++ compiler")

    eager = field.geometry_network.value_features_and_gradient

    def backward_fails(points, create_graph):
        return tuple(BackwardFails.apply(output) for output in eager(points, create_graph))

    field._compiled["geometry and gradient"] = backward_fails
    points = torch.rand(20, 3)
    level, _, gradient = field.get_level_value_and_gradient(points)
    assert field._compile_failed and "backward compilation failed" in capsys.readouterr().out
    ((gradient.norm(dim=-1) - 1.0) ** 2).mean().add(level.mean()).backward()  # the eager pass trains
    assert all(parameter.grad is None or torch.isfinite(parameter.grad).all() for parameter in field.parameters())

    field = config.setup()

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    field._compiled["radiance"] = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        field.get_colors(points, points, points, torch.rand(20, config.geometry.feature_dim))
    assert not field._compile_failed


def test_grid_queries_outside_autograd_come_in_pieces_with_the_same_values():
    torch.manual_seed(0)
    encoding = ProgressiveHashEncoding(HashGridConfig(num_levels=6, max_resolution=256, log2_hashmap_size=12, implementation="torch"))
    points = torch.rand(1000, 3) * 2 - 1
    with torch.no_grad():
        whole = encoding.forward_with_jacobian(points)
        encoding.grids.query_chunk_size = 96
        with LargestGather() as gathers:
            pieces = encoding.forward_with_jacobian(points)
    assert torch.equal(whole[0], pieces[0]) and torch.equal(whole[1], pieces[1])
    # the corner rows read at once are those of one piece: 96 points x 6 levels x 8 corners
    assert gathers.largest == 96 * 6 * 8


class LargestGather(TorchDispatchMode):
    """The most table rows one `embedding_bag` (the grid's read) takes while it is active."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten._embedding_bag, torch.ops.aten._embedding_bag_forward_only):
            self.largest = max(self.largest, args[1].numel())
        return result


def test_the_compile_guard_leaves_the_training_graph_to_the_training_step():
    """The guard's first call runs the pass's backward on its own graph: with the passes "compiled" as their eager
    selves, a training step (geometry, then colour on the geometry's outputs, then one backward) still trains."""
    torch.manual_seed(0)
    config = SurfaceFieldConfig(compile=True)
    config.geometry.num_layers, config.geometry.hidden_dim, config.geometry.skip_layers = 2, 16, ()
    config.radiance.num_layers, config.radiance.hidden_dim = 1, 16
    field = config.setup().train()
    field._compiled["geometry and gradient"] = field.geometry_network.value_features_and_gradient
    field._compiled["radiance"] = field.radiance_network.forward
    points, directions = torch.rand(32, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(32, 3), dim=-1)
    outputs = field(points, directions)
    loss = outputs["rgb"].sum() + ((outputs["gradient"].norm(dim=-1) - 1.0) ** 2).mean()
    loss.backward()
    assert not field._compile_failed and field._backward_compiled == {"geometry and gradient", "radiance"}
    assert all(parameter.grad is not None for parameter in field.geometry_network.parameters())
