"""What every geometry network offers the field: the interface of the IDR/NeuS MLP and of SIREN.

A geometry network maps points of the training space to `[level_value, feature...]`. `SurfaceField` asks it
for three things and never looks inside it:

- `level_value(points)`: the level value alone (the samplers', the occupancy grid's and the mesher's queries);
- `forward(points)`: level value and features, differentiable in the parameters (central differences use it);
- `value_features_and_gradient(points, create_graph)`: level value, features and `d level / d points` (normals,
  the eikonal loss);

and each network says what it has: `feature_dim`, its per-step schedule (`update_to_step`) and the step its
central differences should take (`central_difference_step`). The defaults below are the reference: the
network's `forward` under autograd. A network with a faster evaluation (the MLP's fused closed-form pass)
overrides them and is tested against them.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn


def autograd_value_features_and_gradient(
    forward, points: Float[Tensor, "*bs 3"], create_graph: bool
) -> Tuple[Float[Tensor, "*bs 1"], Float[Tensor, "*bs feature_dim"], Float[Tensor, "*bs 3"]]:
    """`forward(points)` split into level value and features, and the level value's gradient by autograd (under
    `enable_grad`, so that normals also come out of nerfstudio's `no_grad` rendering). With `create_graph` the
    gradient stays differentiable (the eikonal loss then takes autograd's double backward)."""
    with torch.enable_grad():
        if not points.requires_grad:
            points = points.detach().requires_grad_(True)
        output = forward(points)
        level_value = output[..., :1]
        (gradient,) = torch.autograd.grad(
            level_value, points, grad_outputs=torch.ones_like(level_value), create_graph=create_graph, retain_graph=create_graph
        )
    if not create_graph:
        output, gradient = output.detach(), gradient.detach()
    return output[..., :1], output[..., 1:], gradient


class LevelSetNetwork(nn.Module):
    """Base of the geometry networks: `forward` is theirs; the rest defaults to the reference evaluation."""

    feature_dim: int
    """Size of the feature vector after the level value (the radiance network's input)."""

    product_dtype: torch.dtype = torch.float32
    """The dtype of the products of the network's fast evaluation (float32, or bfloat16/float16 where the field's
    precision asks for them: `neurecon_ns.utils.precision`); the reference evaluation runs in float32 whatever
    it is."""

    def forward(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        raise NotImplementedError

    def level_value(self, points: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 1"]:
        return self(points)[..., :1]

    def value_features_and_gradient(
        self, points: Float[Tensor, "num_points 3"], create_graph: bool
    ) -> Tuple[Float[Tensor, "num_points 1"], Float[Tensor, "num_points feature_dim"], Float[Tensor, "num_points 3"]]:
        return autograd_value_features_and_gradient(self, points, create_graph)

    def update_to_step(self, step: int) -> None:
        """Per-step schedule of the network (none by default)."""

    def central_difference_step(self) -> Union[float, Tensor]:
        """The step `h` of central differences in training-space units, when the field is configured for them."""
        return 1e-3
