"""First and second derivatives of a level-set function from its values at a point's six axis neighbours.

With the step `h`, the unit axes `e_i` and the neighbours' values `f_{+i} = f(x + h e_i)`, `f_{-i} = f(x - h e_i)`:

    d f / d x_i (x) ~ (f_{+i} - f_{-i}) / (2 h)                                    (error O(h^2))
    Laplacian f (x) ~ sum_i (f_{+i} + f_{-i} - 2 f(x)) / h^2                         (error O(h^2))

The field evaluates `x` and its six neighbours in one batch, so the Laplacian, which the curvature loss reads
(Neuralangelo, Li et al. 2023, sec. 3.2: the mean of its absolute value), comes from the same seven values
as the gradient. Both stay differentiable in the network's parameters through the values: no second
derivative of the network is taken.
"""

from __future__ import annotations

from typing import Union

import torch
from jaxtyping import Float
from torch import Tensor


def neighbour_offsets(step: Union[float, Tensor], like: Tensor) -> Float[Tensor, "6 3"]:
    """`+h e_x, +h e_y, +h e_z, -h e_x, -h e_y, -h e_z`: the six neighbours' offsets, in that order, on `like`'s
    device and dtype (a tensor `step` stays on its device: no host read)."""
    axes = torch.eye(3, device=like.device, dtype=like.dtype)
    return torch.cat([axes, -axes]) * step


def stencil_points(points: Float[Tensor, "*bs 3"], step: Union[float, Tensor]) -> Float[Tensor, "*bs 7 3"]:
    """Each point followed by its six neighbours in `neighbour_offsets` order: the seven points whose values give
    the gradient and the Laplacian, as one batch."""
    neighbours = points[..., None, :] + neighbour_offsets(step, points)  # [..., 6, 3]
    return torch.cat([points[..., None, :], neighbours], dim=-2)


def gradient_from_neighbours(
    neighbour_values: Float[Tensor, "*bs 6"], step: Union[float, Tensor]
) -> Float[Tensor, "*bs 3"]:
    """`(f_{+i} - f_{-i}) / 2h` per axis, the values in `neighbour_offsets` order."""
    return (neighbour_values[..., :3] - neighbour_values[..., 3:]) / (2.0 * step)


def laplacian_from_neighbours(
    level_value: Float[Tensor, "*bs 1"], neighbour_values: Float[Tensor, "*bs 6"], step: Union[float, Tensor]
) -> Float[Tensor, "*bs 1"]:
    """`(sum of the six neighbours' values - 6 f(x)) / h^2`: the trace of the Hessian by second differences."""
    return (neighbour_values.sum(dim=-1, keepdim=True) - 6.0 * level_value) / (step * step)
