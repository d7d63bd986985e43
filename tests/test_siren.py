"""SIREN geometry network: its initialisation, the sphere fit, and use by any SDF method."""

import dataclasses

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from neurecon_ns.fields.sdf_field import SurfaceFieldConfig
from neurecon_ns.fields.siren import SirenGeometryConfig, SirenGeometryNetwork
from neurecon_ns.models.neus import NeuSModelConfig
from neurecon_ns.models.volsdf import VolSDFModelConfig


def points_in_ball(num: int, radius: float = 1.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(num, 3, generator=generator), dim=-1)
    return directions * radius * torch.rand(num, 1, generator=generator) ** (1.0 / 3.0)


def test_initialisation_keeps_activations_arcsine_distributed_through_depth():
    """SIREN's initialisation: every hidden layer outputs sin(N(0, ~1))-like values, standard deviation
    about 1/sqrt(2) (the arcsine distribution on [-1, 1]), at the last layer as at the first."""
    torch.manual_seed(0)
    network = SirenGeometryNetwork(SirenGeometryConfig(num_layers=8, hidden_dim=256, feature_dim=16))
    hidden = torch.rand(4096, 3) * 2 - 1
    stds = []
    for layer in network.sine_layers:
        hidden = layer(hidden)
        stds.append(hidden.std().item())
    for std in stds[1:]:
        assert 0.6 < std < 0.8, stds
    # and the pre-activations of a hidden layer are of unit scale
    layer = network.sine_layers[-1]
    pre_activation = layer.omega * layer.linear(torch.sin(torch.randn(4096, 256)))
    assert 0.7 < pre_activation.std().item() < 1.6


def test_output_holds_level_value_and_features():
    config = SirenGeometryConfig(num_layers=2, hidden_dim=32, feature_dim=8)
    output = SirenGeometryNetwork(config)(torch.rand(5, 7, 3))
    assert output.shape == (5, 7, 9)


@pytest.fixture(scope="module")
def fitted_siren():
    torch.manual_seed(0)
    config = SirenGeometryConfig(
        num_layers=2, hidden_dim=48, feature_dim=4, init_radius=0.5, first_omega=10.0, pretrain_steps=150
    )
    return SirenGeometryNetwork(config)


@pytest.mark.slow
def test_sphere_pretraining_gives_the_sphere_sdf(fitted_siren):
    points = points_in_ball(4000, seed=1).requires_grad_(True)
    sdf = fitted_siren(points)[:, 0]
    (gradient,) = torch.autograd.grad(sdf.sum(), points)
    exact = points.norm(dim=-1) - 0.5
    assert (sdf - exact).abs().mean() < 0.03
    near_surface = exact.abs() < 0.1
    assert ((gradient.norm(dim=-1)[near_surface] - 1.0).abs().mean()) < 0.15
    # the zero level set is the sphere: the sign is right away from it
    away = exact.abs() > 0.1
    assert (torch.sign(sdf[away]) == torch.sign(exact[away])).float().mean() > 0.99
    # an unfitted SIREN is nothing like it
    torch.manual_seed(0)
    untrained = SirenGeometryNetwork(dataclasses.replace(fitted_siren.config, pretrain_steps=0))
    assert (untrained(points)[:, 0] - exact).abs().mean() > 0.1


@pytest.mark.slow
def test_inside_out_fit_flips_the_sign():
    torch.manual_seed(0)
    config = SirenGeometryConfig(
        num_layers=2, hidden_dim=32, feature_dim=4, init_radius=0.5, inside_out=True, first_omega=10.0,
        pretrain_steps=40,
    )
    network = SirenGeometryNetwork(config)
    centre, outside = network(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.9]]))[:, 0]
    assert centre > 0 > outside


@pytest.mark.parametrize("model_config", [NeuSModelConfig, VolSDFModelConfig], ids=["neus", "volsdf"])
def test_any_sdf_method_trains_with_a_siren(model_config):
    config = model_config(networks=SurfaceFieldConfig(geometry_type="siren"))
    siren = config.networks.siren
    siren.hidden_dim, siren.num_layers, siren.feature_dim = 16, 2, 8
    config.networks.radiance.hidden_dim, config.networks.radiance.num_layers = 16, 1
    for name, value in (("num_uniform", 16), ("num_importance", 8), ("num_initial_samples", 32),
                        ("num_samples_per_iteration", 16), ("num_final_samples", 16), ("num_coarse_kept", 8)):
        if hasattr(config.sampler, name):
            setattr(config.sampler, name, value)
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])), num_train_data=1)
    assert isinstance(model.field.geometry_network, SirenGeometryNetwork)
    origins = torch.tensor([[0.0, 0.0, 2.5]]).expand(16, 3)
    directions = torch.nn.functional.normalize(torch.rand(16, 3) * 0.6 - 0.3 - origins, dim=-1)
    ray_bundle = model.collider(RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(16, 1)))
    model.train()
    outputs = model.get_outputs(ray_bundle)
    loss = sum(model.get_loss_dict(outputs, {"image": torch.rand(16, 3)}).values())
    loss.backward()
    siren_grads = [p.grad for p in model.field.geometry_network.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in siren_grads)
