"""SIREN geometry network: an MLP with periodic activations (Sitzmann et al., NeurIPS 2020).

Every hidden layer is `h_{l+1} = sin(omega * (W_l h_l + b_l))` and the last layer is linear, giving
`[level_value, feature...]` like `GeometryNetwork`. The initialisation is SIREN's (sec. 3.2 and
supplement 1): with `n` the fan-in,

- first layer: `W ~ U(-1/n, 1/n)`, scaled by `omega_0` (30) inside the sine, so that the input
  coordinates in [-1, 1] span several periods;
- every later layer: `W ~ U(-sqrt(6/n) / omega, sqrt(6/n) / omega)`, so that `omega * W h` is close to
  a standard normal when `h` is arcsine-distributed on [-1, 1]: each sine then again outputs an
  arcsine distribution, whatever the depth.

SIREN starts as a random band-limited function, not as a sphere. `pretrain_steps > 0` fits it to the SDF
of a sphere of `init_radius` when it is built, the counterpart of the MLP's geometric initialisation
(volume rendering then starts from one closed surface instead of many).

Its gradient is autograd's (the defaults of `LevelSetNetwork`); the field uses it with
`networks.geometry_type siren`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Type

import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from neurecon_ns.fields.level_set_network import LevelSetNetwork

PRETRAIN_POINTS_PER_STEP = 4096
"""Points per Adam step of the sphere fit: half uniform in the unit ball, half near the sphere."""
PRETRAIN_LEARNING_RATE = 1e-4
"""Adam's step size for the sphere fit (SIREN's own learning rate)."""


class SineLayer(nn.Module):
    """`sin(omega * (W x + b))` with SIREN's uniform initialisation of `W` (bias: PyTorch's default)."""

    def __init__(self, in_dim: int, out_dim: int, omega: float, is_first: bool) -> None:
        super().__init__()
        self.omega = omega
        self.linear = nn.Linear(in_dim, out_dim)
        bound = 1.0 / in_dim if is_first else math.sqrt(6.0 / in_dim) / omega
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: Float[Tensor, "*bs in_dim"]) -> Float[Tensor, "*bs out_dim"]:
        return torch.sin(self.omega * self.linear(x))


def sphere_sdf(points: Float[Tensor, "*bs 3"], radius: float, inside_out: bool) -> Float[Tensor, "*bs 1"]:
    """`|x| - r`, negated for a scene seen from inside."""
    sdf = points.norm(dim=-1, keepdim=True) - radius
    return -sdf if inside_out else sdf


@dataclass
class SirenGeometryConfig(InstantiateConfig):
    """SIREN as the geometry network: level-set value and a feature vector per point."""

    _target: Type = field(default_factory=lambda: SirenGeometryNetwork)
    num_layers: int = 8
    """Number of sine layers."""
    hidden_dim: int = 256
    """Width of the sine layers."""
    feature_dim: int = 256
    """Size of the feature vector passed to the radiance network."""
    first_omega: float = 30.0
    """Frequency factor `omega_0` of the first sine layer."""
    hidden_omega: float = 30.0
    """Frequency factor of the hidden sine layers."""
    pretrain_steps: int = 0
    """Adam steps fitting the network to the SDF of a sphere of `init_radius` when it is built (its counterpart of
    the MLP's geometric initialisation); 0 keeps SIREN's own random initialisation."""
    init_radius: float = 0.5
    """Radius of the sphere of the fit."""
    inside_out: bool = False
    """Flip the sphere's sign (for scenes seen from inside, e.g. rooms)."""
    input_scale: float = 1.0
    """Points are multiplied by this before the first layer; the output SDF is divided by it."""


class SirenGeometryNetwork(LevelSetNetwork):
    """SIREN `x -> (f(x), z(x))`: a level-set value and a feature vector."""

    config: SirenGeometryConfig

    def __init__(self, config: SirenGeometryConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = config.feature_dim
        dims = [3] + [config.hidden_dim] * config.num_layers
        self.sine_layers = nn.ModuleList(
            SineLayer(
                in_dim,
                out_dim,
                omega=config.first_omega if index == 0 else config.hidden_omega,
                is_first=index == 0,
            )
            for index, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:]))
        )
        self.output_layer = nn.Linear(dims[-1], 1 + config.feature_dim)
        bound = math.sqrt(6.0 / dims[-1]) / config.hidden_omega
        with torch.no_grad():
            self.output_layer.weight.uniform_(-bound, bound)
        if config.pretrain_steps > 0:
            self.fit_sphere(config.pretrain_steps)

    def forward(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        """Returns `[level_value, feature...]` per point."""
        hidden = points * self.config.input_scale
        for layer in self.sine_layers:
            hidden = layer(hidden)
        output = self.output_layer(hidden)
        level_value = output[..., :1] / self.config.input_scale
        return torch.cat([level_value, output[..., 1:]], dim=-1)

    def fit_sphere(self, num_steps: int, seed: int = 0) -> float:
        """Fit the level value to the SDF of a sphere of `init_radius` by L1 regression; returns the last loss.

        The points are drawn half uniformly in the unit ball (the region of interest of the training
        space) and half within about 0.05 of the sphere, where the surface must be exact. The random
        stream is seeded so that the same config always builds the same network.
        """
        config = self.config
        device = self.output_layer.weight.device
        generator = torch.Generator(device=device).manual_seed(seed)
        optimizer = torch.optim.Adam(self.parameters(), lr=PRETRAIN_LEARNING_RATE)
        half = PRETRAIN_POINTS_PER_STEP // 2
        loss = torch.zeros(())
        with torch.enable_grad():
            for _ in range(num_steps):
                directions = nn.functional.normalize(torch.randn(2 * half, 3, generator=generator, device=device), dim=-1)
                radii_ball = torch.rand(half, 1, generator=generator, device=device) ** (1.0 / 3.0)
                radii_shell = config.init_radius + 0.05 * torch.randn(half, 1, generator=generator, device=device)
                points = directions * torch.cat([radii_ball, radii_shell.abs()])
                target = sphere_sdf(points, config.init_radius, config.inside_out)
                loss = (self(points)[:, :1] - target).abs().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return float(loss.detach())
