"""The networks' products in bfloat16 (and, for the GPU, in whatever autocast asks for) against float32.

The tolerances hold the bf16 path to the fp32 reference on a network away from its geometric initialisation
(every channel in use, as after training). bfloat16 keeps 8 bits of mantissa: each product's result and each
activation is rounded to a relative 2^-9 = 0.002, and over the paper network's 9 layers the level value moves by
about 1e-3 (6e-3 at most over 2048 points), the SDF gradient by 1-3% and the parameter gradients by 1-2%
(measured on this test's network); the bounds are about twice that.
"""

import math

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation

from neurecon_ns.fields.hash_encoding import HashGridConfig
from neurecon_ns.fields.sdf_field import (
    GeometryNetworkConfig,
    RadianceNetwork,
    RadianceNetworkConfig,
    SurfaceFieldConfig,
)
from neurecon_ns.training import method_config, setup_trainer, small_cpu_config
from neurecon_ns.utils.precision import cpu_flags, has_bf16_matrix_units, product_dtype, resolve_precision

PAPER = {}
"""NeuS's geometry network: 8 x 256, skip at 4, 6 frequencies, weight norm."""
HASH_GRID = {
    "encoding": "hash", "num_layers": 2, "hidden_dim": 64, "skip_layers": (), "feature_dim": 15,
    "hash_grid": HashGridConfig(num_levels=4, min_resolution=4, max_resolution=40, log2_hashmap_size=10,
                                initial_levels=4, implementation="torch"),
}
"""neus-fast's kind: the torch hash grid and a 2 x 64 MLP."""


def relative_error(value, reference):
    return ((value.float() - reference).norm() / reference.norm()).item()


def perturbed_network(settings):
    torch.manual_seed(0)
    network = GeometryNetworkConfig(**settings).setup()
    with torch.no_grad():  # away from the geometric initialisation's near-sphere: every channel carries signal
        for parameter in network.parameters():
            parameter.add_(0.05 * parameter.abs().mean() * torch.randn_like(parameter))
            if parameter.dim() == 2 and parameter.shape[1] == 2:  # the hash tables start near zero
                parameter.add_(1e-1 * torch.randn_like(parameter))
    return network


def outputs_and_parameter_gradients(network, points, dtype):
    network.product_dtype = dtype
    level_value, features, gradient = network.value_features_and_gradient(points, create_graph=True)
    # colour-like terms of value and features, and the eikonal term of the gradient
    loss = level_value.abs().sum() + features.float().tanh().sum() + ((gradient.norm(dim=-1) - 1.0) ** 2).sum()
    parameters = list(network.parameters())
    grads = torch.autograd.grad(loss, parameters)
    return level_value.detach(), features.detach(), gradient.detach(), grads


@pytest.mark.parametrize(
    "settings, level_bound, gradient_bound, parameter_bound",
    [(PAPER, 1.5e-2, 0.06, 0.05), (HASH_GRID, 1e-2, 0.03, 0.03)],
    ids=["paper", "hash-grid"],
)
def test_bf16_products_give_the_fp32_values_and_gradients(settings, level_bound, gradient_bound, parameter_bound):
    network = perturbed_network(settings)
    points = (torch.rand(2048, 3) * 2.0 - 1.0) * 0.8
    level32, features32, gradient32, grads32 = outputs_and_parameter_gradients(network, points, torch.float32)
    level16, features16, gradient16, grads16 = outputs_and_parameter_gradients(network, points, torch.bfloat16)

    # what the mappings and the eikonal term read, and what the optimiser updates, is float32
    assert level16.dtype == gradient16.dtype == torch.float32 and features16.dtype == torch.bfloat16
    assert all(grad.dtype == torch.float32 for grad in grads16)
    level_error = (level16 - level32).abs()
    assert 0 < level_error.max() < level_bound, level_error.max()  # above 0: the products did run in bf16
    assert level_error.median() < level_bound / 5, level_error.median()
    assert relative_error(features16, features32) < 0.02
    gradient_error = (gradient16 - gradient32).norm(dim=-1) / gradient32.norm(dim=-1)
    assert gradient_error.max() < gradient_bound, gradient_error.max()
    for parameter_grad16, parameter_grad32 in zip(grads16, grads32):
        if parameter_grad32.norm() > 0:
            assert relative_error(parameter_grad16, parameter_grad32) < parameter_bound

    # the samplers' query, outside autograd: bf16 products while training, exactly fp32 in evaluation
    with torch.no_grad():
        network.train()
        query16 = network.level_value(points)
        network.eval()
        query_eval = network.level_value(points)
        network.product_dtype = torch.float32
        query32 = network.level_value(points)
    assert torch.allclose(query16, level16, atol=1e-6) and torch.equal(query_eval, query32)
    assert torch.allclose(query32, level32, atol=1e-5)


def test_bf16_radiance_network_gives_the_fp32_colours_and_gradients():
    torch.manual_seed(0)
    network = RadianceNetwork(RadianceNetworkConfig(), feature_dim=256)
    points, normals = torch.rand(1024, 3) - 0.5, torch.randn(1024, 3)
    directions = torch.nn.functional.normalize(torch.randn(1024, 3), dim=-1)
    features = torch.randn(1024, 256)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        network.product_dtype = dtype
        rgb = network(points, directions, normals, features.to(dtype))
        results[dtype] = (rgb.detach(), torch.autograd.grad(rgb.sum(), list(network.parameters())))
    rgb16, grads16 = results[torch.bfloat16]
    rgb32, grads32 = results[torch.float32]
    assert rgb16.dtype == torch.float32 and 0 < (rgb16 - rgb32).abs().max() < 1e-2
    # 1% or less, except the first layer's weight-norm direction (5%): its gradient is what remains of the weight's
    # gradient once the component along the weight is taken out, a difference of nearly equal tensors
    for grad16, grad32 in zip(grads16, grads32):
        assert grad16.dtype == torch.float32 and relative_error(grad16, grad32) < 0.1


def test_auto_chooses_bf16_on_cpus_with_bf16_units_and_autocast_on_gpus(tmp_path):
    assert resolve_precision("auto", "cpu", flags={"fpu", "avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", flags={"fpu", "avx512f", "amx_tile", "amx_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", flags={"fpu", "avx2", "fma"}) == "fp32"
    assert resolve_precision("auto", "cpu", flags={"avx512f", "avx512bw"}) == "fp32"  # AVX-512 alone emulates bf16
    assert resolve_precision("auto", "cuda") == "autocast"
    for setting in ("fp32", "bf16", "autocast"):
        assert resolve_precision(setting, "cpu", flags={"amx_bf16"}) == setting

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") is None
    # without /proc/cpuinfo, torch's own probe answers
    assert has_bf16_matrix_units(None) == any(torch.cpu.get_capabilities().get(flag, False) for flag in ("amx_bf16", "avx512_bf16"))


def test_gpu_half_path_products_follow_autocast():
    """What nerfstudio's --mixed-precision does on a GPU, on a CPU: the products in autocast's dtype (float16), the
    level value and the SDF gradient in float32, and float32 without autocast."""
    assert product_dtype("autocast", "cpu") == torch.float32
    assert product_dtype("bf16", "cpu") == product_dtype("bf16", "cuda") == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert product_dtype("autocast", "cpu") == torch.float16
        assert product_dtype("fp32", "cpu") == torch.float32

    torch.manual_seed(0)
    config = SurfaceFieldConfig(precision="autocast")
    config.geometry.num_layers, config.geometry.hidden_dim, config.geometry.skip_layers = 2, 32, ()
    config.radiance.num_layers, config.radiance.hidden_dim = 1, 32
    field = config.setup()
    points = torch.rand(64, 3) - 0.5
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    reference = field(points, directions)
    with torch.autocast("cpu", dtype=torch.float16):
        outputs = field(points, directions)
        assert field.geometry_network.product_dtype == torch.float16
        _, features, _ = field.get_level_value_and_gradient(points)
    assert features.dtype == torch.float16
    assert outputs["level"].dtype == outputs["gradient"].dtype == outputs["rgb"].dtype == torch.float32
    assert 0 < (outputs["level"] - reference["level"]).abs().max() < 2e-3
    assert ((outputs["gradient"] - reference["gradient"]).norm(dim=-1) / reference["gradient"].norm(dim=-1)).max() < 1e-2
    field(points, directions)
    assert field.geometry_network.product_dtype == torch.float32  # autocast off again: float32


def test_a_small_model_trains_in_bf16(small_scene, tmp_path):
    config = small_cpu_config(method_config("neus-dtu"), small_scene.output_dir, tmp_path, 40, hidden_dim=64, num_layers=4,
                              rays_per_batch=128)
    config.pipeline.model.networks.precision = "bf16"
    trainer = setup_trainer(config)
    model = trainer.pipeline.model
    losses = []
    for step in range(40):
        trainer.pipeline.train()
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        _, loss_dict, _ = trainer.train_iteration(step)
        losses.append(loss_dict["rgb_loss"].item())
    assert model.field.resolved_precision == "bf16" and model.field.geometry_network.product_dtype == torch.bfloat16
    assert all(math.isfinite(loss) for loss in losses)
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.9 * first, (first, last)  # measured: 0.171 -> 0.141
