"""Empty-space skipping for SDF models: a coarse grid of the cells the surface may pass through.

A cell of the grid over `[-r, r]^3` is *occupied* when the SDF at its centre is within
`margin * half_diagonal + band` of zero: for a 1-Lipschitz SDF (what the eikonal loss asks for) a cell
whose centre value exceeds its half diagonal holds no surface, and `band` is how far from the surface the
model's density is still not negligible (NeuS: a few `1/inv_s`, wide early in training, so that the
surface can still grow into cells the current SDF calls empty). The grid is refreshed from the current
SDF every few steps (no gradient).

Each ray's `[near, far]` is then shrunk to the first and last occupied cell it passes (found by stepping
through the grid, a lookup per step, no network query), so the sampler spends its samples where the
surface can be. A ray that meets no occupied cell keeps a zero-length segment at its far end: it sees
nothing, which is what empty space looks like.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

LevelFunction = Callable[[Float[Tensor, "num_points 3"]], Float[Tensor, " num_points"]]


class SurfaceOccupancyGrid(nn.Module):
    """Occupied cells of `[-radius, radius]^3` at `resolution`^3, and ray bounds from them."""

    def __init__(self, resolution: int, radius: float, margin: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.radius = radius
        self.margin = margin
        # everything is occupied until the first update: nothing is skipped before the SDF is known
        self.register_buffer("occupied", torch.ones((resolution,) * 3, dtype=torch.bool))

    @property
    def cell_size(self) -> float:
        return 2.0 * self.radius / self.resolution

    def cell_centres(self, device: torch.device) -> Float[Tensor, "num_cells 3"]:
        axis = (torch.arange(self.resolution, device=device, dtype=torch.float32) + 0.5) * self.cell_size - self.radius
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)

    @torch.no_grad()
    def update(self, sdf_fn: LevelFunction, band: float = 0.0, chunk_size: int = 2**16) -> None:
        """Mark the cells whose centre SDF is within `margin` half diagonals plus `band` of zero, dilated by
        one cell."""
        centres = self.cell_centres(self.occupied.device)
        sdf = torch.cat([sdf_fn(chunk) for chunk in torch.split(centres, chunk_size)])
        half_diagonal = 0.5 * math.sqrt(3.0) * self.cell_size
        near_surface = (sdf.abs() <= self.margin * half_diagonal + band).reshape(self.occupied.shape)
        dilated = F.max_pool3d(near_surface[None, None].float(), kernel_size=3, stride=1, padding=1)[0, 0] > 0
        self.occupied.copy_(dilated)

    def lookup(self, points: Float[Tensor, "*bs 3"]) -> Bool[Tensor, "*bs"]:
        """Occupancy of the cell holding each point (points outside the grid are empty)."""
        index = torch.floor((points + self.radius) / self.cell_size).long()
        inside = ((index >= 0) & (index < self.resolution)).all(dim=-1)
        index = index.clamp(0, self.resolution - 1)
        return self.occupied[index[..., 0], index[..., 1], index[..., 2]] & inside

    @torch.no_grad()
    def ray_bounds(
        self,
        origins: Float[Tensor, "num_rays 3"],
        directions: Float[Tensor, "num_rays 3"],
        nears: Float[Tensor, "num_rays 1"],
        fars: Float[Tensor, "num_rays 1"],
    ) -> Tuple[Float[Tensor, "num_rays 1"], Float[Tensor, "num_rays 1"]]:
        """`[near, far]` shrunk to the occupied cells met along each ray (padded by one step each side)."""
        num_steps = 2 * self.resolution
        fractions = (torch.arange(num_steps, device=origins.device, dtype=origins.dtype) + 0.5) / num_steps
        t = nears + (fars - nears) * fractions  # [num_rays, num_steps]
        occupied = self.lookup(origins[:, None, :] + t[..., None] * directions[:, None, :])
        step = (fars - nears) / num_steps
        any_occupied = occupied.any(dim=-1, keepdim=True)
        first = torch.argmax(occupied.to(torch.uint8), dim=-1, keepdim=True)
        last = num_steps - 1 - torch.argmax(occupied.flip(-1).to(torch.uint8), dim=-1, keepdim=True)
        new_nears = torch.maximum(t.gather(-1, first) - step, nears)
        new_fars = torch.minimum(t.gather(-1, last) + step, fars)
        return torch.where(any_occupied, new_nears, fars), torch.where(any_occupied, new_fars, fars)

    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())
