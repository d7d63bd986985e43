"""nerfstudio's pixel sampler, with a share of each batch drawn where the model's error was last seen high.

The training images are cut into tiles (`tile_size` pixels square). Each tile keeps the error of the last ray the
model rendered in it (`record_errors`, called from the model's loss with the batch's indices): colour error inside
the object plus the opacity's miss against the mask. `error_share` of every batch is drawn tile by tile in
proportion to those errors and uniformly within the tile; the rest uniformly over every pixel, as nerfstudio
draws them. Tiles never seen keep the largest error a ray can have, so each is visited early.

Uniform rays spend much of a batch on the background and on what is already right; these go where the
photographs and the render still disagree. A face that renders right while misplaced (a wall the cameras see
obliquely) gets fewer rays than uniform draws would give it: on the DTU-scale building half the rays drawn by
error raise the held-out PSNR and leave such a wall farther from its plane (docs/benchmarks.md, "Seeds, and rays
drawn where the error is"). The gradient is not re-weighted; the uniform share keeps every pixel in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Type, Union

import torch
from jaxtyping import Float, Int
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from torch import Tensor

UNSEEN_TILE_ERROR = 2.0
"""Error of a tile no ray has reached yet: the largest a ray can record (colour error 1 plus a missed mask 1)."""


@dataclass
class ErrorWeightedPixelSamplerConfig(PixelSamplerConfig):
    """nerfstudio's pixel sampler plus a share of rays drawn in proportion to the error last seen in each tile."""

    _target: Type = field(default_factory=lambda: ErrorWeightedPixelSampler)
    error_share: float = 0.0
    """Share of each batch drawn in proportion to the tiles' errors (0: nerfstudio's uniform sampling alone). The
    tiles' errors are not kept in checkpoints: a resumed run visits every tile again first."""
    tile_size: int = 8
    """Side in pixels of the tiles the errors are kept for."""


class ErrorWeightedPixelSampler(PixelSampler):
    """See the module's docstring."""

    config: ErrorWeightedPixelSamplerConfig

    def __init__(self, config: ErrorWeightedPixelSamplerConfig, **kwargs) -> None:
        super().__init__(config, **kwargs)
        if not 0.0 <= config.error_share <= 1.0:
            from neurecon_ns.errors import UserInputError

            raise UserInputError(
                f"--pipeline.datamanager.pixel-sampler.error-share {config.error_share}: give a share between 0 and 1."
            )
        self.tile_errors: Optional[Float[Tensor, "num_images tiles_y tiles_x"]] = None
        """Per training image (by its index in the dataset), the error last recorded in each tile."""
        self._batch_image_indices: Optional[Tensor] = None

    @property
    def active(self) -> bool:
        return self.config.error_share > 0

    def sample(self, image_batch: Dict):
        image_indices = image_batch["image_idx"]
        # the image cache hands out one batch again and again: its tiles are looked at once
        if self.active and isinstance(image_batch["image"], Tensor) and image_indices is not self._batch_image_indices:
            self._batch_image_indices = image_indices
            self._allocate(image_batch["image"], image_indices)
        return super().sample(image_batch)

    def _allocate(self, images: Tensor, image_indices: Tensor) -> None:
        """The tiles of every image of the dataset this batch names (grown when a later batch names more)."""
        num_images = int(image_indices.max()) + 1
        height, width = images.shape[1:3]
        tile = self.config.tile_size
        shape = (num_images, -(-height // tile), -(-width // tile))
        if self.tile_errors is not None and self.tile_errors.shape[0] >= num_images and self.tile_errors.shape[1:] == shape[1:]:
            return
        errors = torch.full(shape, UNSEEN_TILE_ERROR, device=images.device)
        if self.tile_errors is not None and self.tile_errors.shape[1:] == shape[1:]:
            errors[: self.tile_errors.shape[0]] = self.tile_errors
        self.tile_errors = errors

    def sample_method(
        self,
        batch_size: int,
        num_images: int,
        image_height: int,
        image_width: int,
        mask: Optional[Tensor] = None,
        device: Union[torch.device, str] = "cpu",
    ) -> Int[Tensor, "batch_size 3"]:
        num_by_error = round(batch_size * self.config.error_share)
        if not self.active or mask is not None or self._batch_image_indices is None or num_by_error == 0:
            return super().sample_method(batch_size, num_images, image_height, image_width, mask=mask, device=device)
        uniform = super().sample_method(batch_size - num_by_error, num_images, image_height, image_width, device=device)
        return torch.cat([uniform, self.sample_by_error(num_by_error, image_height, image_width, device)])

    def sample_by_error(self, num_rays: int, image_height: int, image_width: int, device) -> Int[Tensor, "num_rays 3"]:
        """`num_rays` pixels (batch image, y, x): a tile with probability in proportion to its error, then a pixel
        uniformly inside it (tiles on the right and bottom edges may be cut short)."""
        assert self.tile_errors is not None and self._batch_image_indices is not None
        tile = self.config.tile_size
        batch_errors = self.tile_errors[self._batch_image_indices.to(self.tile_errors.device)]  # [B, ty, tx]
        _, tiles_y, tiles_x = batch_errors.shape
        chosen = torch.multinomial(batch_errors.flatten().clamp(min=1e-6), num_rays, replacement=True)
        image, tile_y, tile_x = chosen // (tiles_y * tiles_x), (chosen // tiles_x) % tiles_y, chosen % tiles_x
        extent_y = (image_height - tile_y * tile).clamp(max=tile)
        extent_x = (image_width - tile_x * tile).clamp(max=tile)
        jitter = torch.rand(2, num_rays, device=chosen.device)
        y = tile_y * tile + (jitter[0] * extent_y).long()
        x = tile_x * tile + (jitter[1] * extent_x).long()
        return torch.stack([image, y, x], dim=-1).to(device)

    @torch.no_grad()
    def record_errors(self, indices: Int[Tensor, "num_rays 3"], errors: Float[Tensor, " num_rays"]) -> None:
        """Keep each ray's error (indices as the batch gives them: dataset image, y, x) for its tile; of two rays in
        one tile, one's error stays."""
        if self.tile_errors is None:
            return
        tile = self.config.tile_size
        indices = indices.to(self.tile_errors.device).long()
        self.tile_errors[indices[:, 0], indices[:, 1] // tile, indices[:, 2] // tile] = errors.to(self.tile_errors)
