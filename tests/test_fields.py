"""The geometry network's closed-form gradient is autograd's, value for value and in what it trains."""

import pytest
import torch
import torch.nn.functional as F

from neurecon_ns.fields.hash_encoding import HashGridConfig
from neurecon_ns.fields.sdf_field import GeometryNetworkConfig, SurfaceFieldConfig


def autograd_value_and_gradient(network, points):
    points = points.detach().requires_grad_(True)
    output = network(points)
    (gradient,) = torch.autograd.grad(output[:, :1].sum(), points, create_graph=True)
    return output, gradient


@pytest.mark.parametrize(
    "settings",
    [
        {},  # NeuS's: 8 x 256, skip at 4, 6 frequencies, weight norm
        # skips at the first, a middle and the output layer
        {"num_layers": 4, "hidden_dim": 32, "skip_layers": (0, 2, 4), "num_frequencies": 3, "input_scale": 2.5},
        {"num_layers": 2, "hidden_dim": 32, "skip_layers": (), "num_frequencies": 0, "use_weight_norm": False},
        # neus-fast's: the torch hash grid (two dense and two hashed levels, one not yet active), 2 x 64 MLP
        {"encoding": "hash", "num_layers": 2, "hidden_dim": 64, "skip_layers": (), "feature_dim": 15, "use_weight_norm": False,
         "hash_grid": HashGridConfig(num_levels=4, min_resolution=4, max_resolution=40, log2_hashmap_size=10,
                                     initial_levels=3, steps_per_level=100, implementation="torch")},
    ],
    ids=["paper", "skips-and-input-scale", "no-encoding", "hash-grid"],
)
def test_closed_form_gradient_equals_autograd_and_trains_the_same(settings):
    torch.manual_seed(0)
    network = GeometryNetworkConfig(**settings).setup().double()
    with torch.no_grad():  # leave the geometric initialisation's near-sphere for a generic function
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    assert network.fused_gradient and network.fused_level_query
    points = torch.rand(300, 3, dtype=torch.float64) * 2.0 - 1.0
    points[:3] = torch.tensor([[1.2, 0.1, -0.3], [0.0, -1.5, 0.2], [0.3, 0.3, 0.3]])  # outside the grid's cube too
    expected_output, expected_gradient = autograd_value_and_gradient(network, points)
    level_value, features, gradient = network.forward_with_gradient(points)
    output = torch.cat([level_value, features], dim=-1)
    # softplus is linear beyond beta z = 20 in torch, while its closed-form slope is sigmoid(20) = 1 - 2e-9 there
    assert torch.allclose(output, expected_output, atol=1e-10)
    assert torch.allclose(gradient, expected_gradient, rtol=1e-6, atol=1e-7)
    assert gradient.norm(dim=-1).std() > 1e-3  # a gradient that varies: the comparison is not of constants
    assert torch.allclose(network.level_value(points), expected_output[:, :1], atol=1e-12)
    with torch.no_grad():  # the samplers' queries: the closed-form pass's products, batch dimensions kept
        level_value = network.level_value(points.reshape(3, 100, 3))
    assert level_value.shape == (3, 100, 1) and torch.allclose(level_value.reshape(-1, 1), expected_output[:, :1], atol=1e-12)

    # a loss of both outputs (colour-like terms of value and features, the eikonal term of the gradient)
    # trains the parameters through either in the same direction
    output_weights = torch.randn_like(output)

    def parameter_gradients(output, gradient):
        loss = ((gradient.norm(dim=-1) - 1.0) ** 2).mean() + (output_weights * output).tanh().sum()
        return torch.autograd.grad(loss, list(network.parameters()), allow_unused=True)

    closed_form_grads = parameter_gradients(output, gradient)
    for closed_form, by_autograd in zip(closed_form_grads, parameter_gradients(expected_output, expected_gradient)):
        if by_autograd is None:
            assert closed_form is None or closed_form.abs().max() == 0
        else:
            assert torch.allclose(closed_form, by_autograd, rtol=1e-6, atol=1e-7)


def test_field_uses_the_closed_form_and_a_failed_compile_falls_back_to_eager(capsys):
    torch.manual_seed(0)
    config = SurfaceFieldConfig(compile=True)
    config.geometry.num_layers, config.geometry.hidden_dim, config.geometry.skip_layers = 2, 16, ()
    config.radiance.num_layers, config.radiance.hidden_dim = 1, 16
    field = config.setup()

    def broken_compiled_pass(*args):
        raise RuntimeError("no C++ compiler found\ndetails")

    # what a machine without a compiler raises at the first call
    field._compiled["geometry and gradient"] = broken_compiled_pass
    points = torch.rand(2, 5, 3)
    level, features, gradient = field.get_level_value_and_gradient(points)
    assert level.shape == (2, 5, 1) and features.shape == (2, 5, config.geometry.feature_dim) and gradient.shape == (2, 5, 3)
    assert field._compile_failed and "no C++ compiler found" in capsys.readouterr().out
    expected_output, expected_gradient = autograd_value_and_gradient(field.geometry_network, points.reshape(-1, 3))
    assert torch.allclose(gradient.reshape(-1, 3), expected_gradient, atol=1e-5)


@pytest.mark.slow
def test_compiled_field_gives_the_eager_values():
    """`networks.compile`: where torch.compile works (a C++ compiler on a CPU), the compiled passes give the
    eager ones; where it does not, the field has fallen back to them."""
    import shutil

    torch.manual_seed(0)
    config = SurfaceFieldConfig(compile=True)
    config.geometry.num_layers, config.geometry.hidden_dim, config.geometry.skip_layers = 2, 16, ()
    config.radiance.num_layers, config.radiance.hidden_dim = 1, 16
    field = config.setup()
    points = torch.rand(64, 3) * 2.0 - 1.0
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    compiled = field(points, directions)
    field.config.compile = False
    eager = field(points, directions)
    if shutil.which("g++") or shutil.which("c++"):
        assert not field._compile_failed
    for name in ("level", "gradient", "rgb"):
        assert torch.allclose(compiled[name], eager[name], atol=1e-5), name


def test_radiance_network_is_the_mlp_on_the_concatenated_input():
    """The colour network multiplies its feature block on its own; it is IDR's MLP on `[x, v, n, z]`, value and
    gradient."""
    from neurecon_ns.fields.sdf_field import RadianceNetworkConfig

    torch.manual_seed(0)
    network = RadianceNetworkConfig().setup(feature_dim=256).double()
    points, directions, normals, features = (torch.randn(2, 50, dim, dtype=torch.float64, requires_grad=True) for dim in (3, 3, 3, 256))
    hidden = torch.cat([points, network.direction_encoding(directions), normals, features], dim=-1)
    for index, layer in enumerate(network.layers):
        hidden = layer(hidden)
        hidden = torch.relu(hidden) if index < len(network.layers) - 1 else hidden
    expected = torch.sigmoid(hidden)
    colour = network(points, directions, normals, features)
    assert colour.shape == (2, 50, 3) and torch.allclose(colour, expected, atol=1e-12)
    inputs = [normals, features, *network.parameters()]
    for got, want in zip(torch.autograd.grad(colour.sum(), inputs), torch.autograd.grad(expected.sum(), inputs)):
        assert torch.allclose(got, want, atol=1e-12)


def test_radiance_network_without_directions_gives_a_point_one_colour_from_every_view():
    """`use_directions=False` is a Lambertian colour: the view direction is not an input, so turning the camera
    changes nothing, while the point, normal and feature still do."""
    from neurecon_ns.fields.sdf_field import RadianceNetworkConfig

    torch.manual_seed(0)
    network = RadianceNetworkConfig(num_layers=2, hidden_dim=32, use_directions=False).setup(feature_dim=16)
    with_directions = RadianceNetworkConfig(num_layers=2, hidden_dim=32).setup(feature_dim=16)
    assert network.layers[0].weight.shape[1] == with_directions.layers[0].weight.shape[1] - 27  # [v, sin, cos] x 3
    points, normals, features = torch.randn(40, 3), torch.randn(40, 3), torch.randn(40, 16)
    directions = F.normalize(torch.randn(40, 3), dim=-1)
    colour = network(points, directions, normals, features)
    assert torch.equal(colour, network(points, -directions, normals, features))
    assert not torch.allclose(colour, network(points, directions, normals, features + 1.0))
    assert not torch.allclose(with_directions(points, directions, normals, features), with_directions(points, -directions, normals, features))


def test_a_field_queried_with_no_points_returns_empty_outputs():
    """A chunk in which no point needs a query (every texel seen by no view, say) asks the field for nothing."""
    field = SurfaceFieldConfig(geometry=GeometryNetworkConfig(num_layers=2, hidden_dim=32, skip_layers=())).setup()
    no_points = torch.zeros(0, 3)
    level_value, features, gradient = field.get_level_value_and_gradient(no_points)
    assert level_value.shape == (0, 1) and gradient.shape == (0, 3) and features.shape[0] == 0
    assert field.get_colors(no_points, no_points, gradient, features).shape == (0, 3)


def test_closed_form_gradient_runs_in_full_precision_under_autocast():
    """Mixed precision (nerfstudio's `--mixed-precision`, here CPU's bfloat16 autocast) leaves the closed-form pass
    in float32, forward and backward."""
    torch.manual_seed(0)
    network = GeometryNetworkConfig(num_layers=4, hidden_dim=64, skip_layers=(2,)).setup()
    points = torch.rand(256, 3) * 2.0 - 1.0
    *expected_outputs, expected_gradient = network.forward_with_gradient(points)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        level_value, features, gradient = network.forward_with_gradient(points)
    assert level_value.dtype == features.dtype == gradient.dtype == torch.float32
    assert torch.allclose(level_value, expected_outputs[0]) and torch.allclose(features, expected_outputs[1])
    assert torch.allclose(gradient, expected_gradient)
    ((gradient.norm(dim=-1) - 1.0) ** 2).mean().backward()
    assert all(parameter.grad is not None and parameter.grad.dtype == torch.float32 for parameter in network.parameters())


def test_reference_implementation_is_the_fused_one_through_the_field():
    """`geometry.implementation`: "reference" runs every query layer by layer under autograd, "fused" the closed-form
    pass; with the same weights the field gives the same level values, gradients and parameter gradients."""
    torch.manual_seed(0)
    fields = {}
    for implementation in ("fused", "reference"):
        torch.manual_seed(0)
        config = SurfaceFieldConfig()
        config.geometry.num_layers, config.geometry.hidden_dim, config.geometry.skip_layers = 4, 64, (2,)
        config.geometry.implementation = implementation
        fields[implementation] = config.setup().double().train()
    assert fields["fused"].geometry_network.fused_gradient and not fields["reference"].geometry_network.fused_gradient
    points = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    results = {}
    for implementation, field in fields.items():
        level, features, gradient = field.get_level_value_and_gradient(points)
        loss = ((gradient.norm(dim=-1) - 1.0) ** 2).mean() + (level * features[:, :1]).sum()
        grads = torch.autograd.grad(loss, list(field.geometry_network.parameters()))
        with torch.no_grad():
            query = field.get_level_value(points)
        results[implementation] = (level, gradient, query, grads)
    for fused, reference in zip(results["fused"][:3], results["reference"][:3]):
        assert torch.allclose(fused, reference, atol=1e-10)
    for fused, reference in zip(results["fused"][3], results["reference"][3]):
        assert torch.allclose(fused, reference, rtol=1e-6, atol=1e-9)
