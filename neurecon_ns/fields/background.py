"""NeRF++'s background field: a NeRF of the space outside the unit sphere (Zhang et al. 2020, sec. 4).

A point `x` with `r = |x| > 1` is given to the network by its inverted-sphere coordinates
`(x / r, 1 / r)`: a direction on the unit sphere and an inverse distance in `(0, 1)`. The whole
unbounded outside then fits in a bounded 4-d box, and `1 / r = 0` is a valid input: it is the
sphere at infinity, where light that depends on the direction only (a sky, distant walls) lives.
As in NeuS's captures without masks, this field explains everything the surface inside the unit
sphere does not.

The field knows nothing of rays: it maps inverted-sphere coordinates and a view direction to a
density and a colour (`model_components/background.py` places the samples and composites them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn

from neurecon_ns.fields.sdf_field import PositionalEncoding


def inverted_sphere_coordinates(points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 4"]:
    """NeRF++ eq. 7: `x -> (x / r, 1 / r)` with `r = |x|`, for points outside the unit sphere."""
    inverse_radius = 1.0 / points.norm(dim=-1, keepdim=True)
    return torch.cat([points * inverse_radius, inverse_radius], dim=-1)


@dataclass
class BackgroundFieldConfig(InstantiateConfig):
    """The background NeRF (NeRF++ / NeuS settings: 8 layers of 256, 10 and 4 frequencies)."""

    _target: Type = field(default_factory=lambda: BackgroundField)
    num_layers: int = 8
    """Hidden layers of the density MLP."""
    hidden_dim: int = 256
    """Width of the hidden layers."""
    skip_layers: Tuple[int, ...] = (4,)
    """Hidden layers whose input is concatenated with the encoded point again."""
    num_frequencies: int = 10
    """Frequencies of the positional encoding of the inverted-sphere coordinates."""
    num_direction_frequencies: int = 4
    """Frequencies of the positional encoding of the view direction."""


class BackgroundField(nn.Module):
    """MLP `((x/r, 1/r), v) -> (sigma, c)`: density from the point alone, colour also from the view direction."""

    config: BackgroundFieldConfig

    def __init__(self, config: BackgroundFieldConfig) -> None:
        super().__init__()
        self.config = config
        self.point_encoding = PositionalEncoding(4, config.num_frequencies)
        self.direction_encoding = PositionalEncoding(3, config.num_direction_frequencies)
        encoded_dim = self.point_encoding.get_out_dim()
        layers = []
        in_dim = encoded_dim
        for index in range(config.num_layers):
            layer_in = in_dim + encoded_dim if index in config.skip_layers else in_dim
            layers.append(nn.Linear(layer_in, config.hidden_dim))
            in_dim = config.hidden_dim
        self.point_layers = nn.ModuleList(layers)
        self.density_head = nn.Linear(config.hidden_dim, 1)
        self.feature_layer = nn.Linear(config.hidden_dim, config.hidden_dim)
        color_hidden = max(config.hidden_dim // 2, 1)
        self.color_layers = nn.Sequential(
            nn.Linear(config.hidden_dim + self.direction_encoding.get_out_dim(), color_hidden),
            nn.ReLU(),
            nn.Linear(color_hidden, 3),
        )

    def forward(
        self, coordinates: Float[Tensor, "*bs 4"], directions: Float[Tensor, "*bs 3"]
    ) -> Dict[str, Tensor]:
        """`density` `[*bs, 1]` (non-negative, per unit of `1/r`) and `rgb` `[*bs, 3]` in [0, 1]."""
        encoded = self.point_encoding(coordinates)
        hidden = encoded
        for index, layer in enumerate(self.point_layers):
            if index in self.config.skip_layers:
                hidden = torch.cat([hidden, encoded], dim=-1)
            hidden = torch.relu(layer(hidden))
        density = F.softplus(self.density_head(hidden))
        features = self.feature_layer(hidden)
        rgb = torch.sigmoid(self.color_layers(torch.cat([features, self.direction_encoding(directions)], dim=-1)))
        return {"density": density, "rgb": rgb}
