"""nerfstudio's data manager with foreground masks delivered as data, not as a sampling region.

nerfstudio's own `mask` key makes its pixel sampler draw rays only inside the mask, which would
leave a mask loss nothing to push against, and its mask loader accepts single-channel files only.
Here the data parser lists the masks under `metadata["fg_mask_filenames"]`, the dataset loads them
(any channel count, resized with the image) as `fg_mask` in [0, 1], and the pixel sampler gathers
them per ray like any other image-shaped key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset


class SurfaceDataset(InputDataset):
    """Images plus optional `fg_mask` [H, W, 1]; honours the data parser's `downscale_factor`."""

    def __init__(self, dataparser_outputs: DataparserOutputs, scale_factor: float = 1.0):
        downscale = float(dataparser_outputs.metadata.get("downscale_factor", 1))
        super().__init__(dataparser_outputs, scale_factor=scale_factor / downscale)
        self.fg_mask_filenames = dataparser_outputs.metadata.get("fg_mask_filenames")

    def get_metadata(self, data: Dict) -> Dict:
        if self.fg_mask_filenames is None:
            return {}
        height, width = data["image"].shape[:2]
        with Image.open(self.fg_mask_filenames[data["image_idx"]]) as mask_image:
            mask_image = mask_image.convert("L")
            if mask_image.size != (width, height):
                mask_image = mask_image.resize((width, height), resample=Image.Resampling.NEAREST)
            mask = np.asarray(mask_image, dtype=np.float32) / 255.0
        return {"fg_mask": (torch.from_numpy(mask)[..., None] > 0.5).float()}


class SurfaceDataManager(VanillaDataManager[SurfaceDataset]):
    """`VanillaDataManager` over `SurfaceDataset`."""


@dataclass
class SurfaceDataManagerConfig(VanillaDataManagerConfig):
    """nerfstudio's vanilla data manager, with foreground masks as per-ray data."""

    _target: Type = field(default_factory=lambda: SurfaceDataManager)
